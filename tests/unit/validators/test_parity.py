"""Greedy agreement: the share of a reference's greedy tokens another backend also predicts on the same prefix."""

import torch

from validators.parity import greedy_agreement, greedy_match


def logits_predicting(tokens: list[int], vocab: int = 8) -> torch.Tensor:
    """[1, L, V] logits whose argmax at position i is tokens[i]."""
    out = torch.zeros(1, len(tokens), vocab)
    out[0, torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return out


def test_agreement_counts_every_position_where_match_stops_at_the_first_difference():
    generated = torch.tensor([[5, 6, 1, 2, 3, 4]])  # a prompt of 2, then 4 greedy tokens 1 2 3 4
    # the other backend, scoring that sequence, predicts 1 after 6 (right), 7 after 1 (wrong), then 3 and 4
    other = logits_predicting([0, 1, 7, 3, 4, 0])
    assert greedy_agreement(generated, other, 4) == 3
    assert greedy_match(generated, torch.tensor([[5, 6, 1, 7, 3, 4]]), 4) == 1  # one flip ends the match


def test_a_backend_that_agrees_everywhere_scores_every_token():
    generated = torch.tensor([[2, 3, 4, 5]])
    assert greedy_agreement(generated, logits_predicting([3, 4, 5, 0]), 3) == 3
