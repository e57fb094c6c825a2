"""Reform-aware MLP channel selection: greedy removal with the optimal correction of the kept channels ranks the
channels so that every width keeps a set the reform can correct well."""

import math

import pytest
import torch

from pipeline.compress.importance.greedy_channels import greedy_channel_scores, increasing
from pipeline.compress.importance.mlp_width_costs import removal_costs
from tests.factories import down_projection_problem


def _cost(weight, gram, fisher, kept):
    """The Fisher-weighted error left after the least-squares correction when only `kept` channels stay."""
    order = torch.tensor(list(kept) + [c for c in range(weight.shape[1]) if c not in kept])
    return removal_costs(weight, gram, fisher, order, [len(kept)])[len(kept)]


def test_each_step_removes_the_channel_whose_removal_costs_least_after_the_correction():
    inputs, weight, fisher = down_projection_problem(channels=10)
    gram = inputs.T @ inputs / len(inputs)
    scores = greedy_channel_scores(weight, gram, fisher)
    order = torch.argsort(scores).tolist()  # removal order, first removed first
    kept = set(range(10))
    for channel in order[:-1]:  # independently: try every remaining channel with the least-squares cost
        best = min(sorted(kept), key=lambda c: _cost(weight, gram, fisher, sorted(kept - {c})))
        assert channel == best
        kept.remove(channel)
    assert all(a < b for a, b in zip(scores[order].tolist(), scores[order].tolist()[1:]))


def test_a_channel_the_others_reconstruct_goes_first_however_large_its_weights():
    inputs, weight, fisher = down_projection_problem(channels=8)
    inputs[:, 7] = inputs[:, 2] + 1e-3 * inputs[:, 5]  # channel 7 is (almost) channel 2
    weight[:, 7] *= 20  # and carries the largest weights: the per-channel importance would keep it
    scores = greedy_channel_scores(weight, inputs.T @ inputs / len(inputs), fisher)
    assert int(torch.argmin(scores)) in (2, 7)
    gram = inputs.T @ inputs / len(inputs)
    kept = torch.topk(scores, 6).indices.tolist()
    largest = torch.topk(weight.pow(2).sum(0), 6).indices.tolist()
    assert _cost(weight, gram, fisher, kept) < _cost(weight, gram, fisher, largest)


def test_scores_follow_the_removal_order_even_where_a_later_removal_costs_less():
    assert increasing([1.0, 3.0, 2.0, 5.0]) == [1.0, 3.0, math.nextafter(3.0, math.inf), 5.0]
    assert increasing([0.0, 0.0]) == [0.0, math.nextafter(0.0, math.inf)]


def test_compacting_the_working_matrices_does_not_change_the_order(monkeypatch):
    inputs, weight, fisher = down_projection_problem(tokens=600, channels=20)
    gram = inputs.T @ inputs / len(inputs)
    whole = greedy_channel_scores(weight, gram, fisher)
    monkeypatch.setattr("pipeline.compress.importance.greedy_channels.COMPACT_EVERY", 3)
    assert torch.equal(torch.argsort(greedy_channel_scores(weight, gram, fisher)), torch.argsort(whole))
    assert greedy_channel_scores(weight, gram, fisher).tolist() == pytest.approx(whole.tolist(), rel=1e-6)
