"""Width scoring rules and allocation: planted units rank where they must; greedy removal sees similarity."""

import pytest
import torch

from pipeline.compress.width.goa import goa_importance
from pipeline.errors import SculptError
from pipeline.compress.importance.output_approximation import (contribution_gram, greedy_head_scores, greedy_removal,
                                                    second_moment_scores)
from pipeline.compress.width.legal_widths import AttentionShape
from pipeline.compress.width.layer_plans import LayerPlan, global_plan, plan_parameters, uniform_plan
from pipeline.compress.importance.baseline_scores import (flap_adaptive_scores, flap_uniform_importance, magnitude_importance,
                                            wanda_sp_importance)
from pipeline.compress.calibration.projection_statistics import InputStatistics, stream_statistics
from pipeline.models.adapters import adapter_for
from pipeline.models.spec import dense_decoder_parameters
from tests.factories import tiny_model

QUIET_CHANNEL, LOUD_HEAD, SILENT_HEAD = 5, 4, 1  # tiny llama: 6 query heads in 2 GQA groups, 64 channels


def planted_model():
    """Layer 0: channel 5 writes nothing, head 1 writes nothing, head 4 writes 20x louder."""
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[0]
    o = adapter.attention_linears(layer).o.weight
    gate, up, down = (linear.weight for linear in adapter.mlp_linears(layer))
    q = adapter.attention_linears(layer).q.weight
    with torch.no_grad():
        for weight in (gate, up):
            weight[QUIET_CHANNEL] = 0
        down[:, QUIET_CHANNEL] = 0
        o[:, SILENT_HEAD * 8:(SILENT_HEAD + 1) * 8] = 0
        q[SILENT_HEAD * 8:(SILENT_HEAD + 1) * 8] = 0
        o[:, LOUD_HEAD * 8:(LOUD_HEAD + 1) * 8] *= 20
        q[LOUD_HEAD * 8:(LOUD_HEAD + 1) * 8] *= 20
    return model, adapter, layer


def first_layer_statistics(model, adapter):
    windows = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    found = []
    stream_statistics(model, adapter, windows, lambda i, layer, stats: found.append(stats), full=True, progress=False)
    return found[0]


def assert_planted(importance):
    assert int(importance.mlp_channels.argmin()) == QUIET_CHANNEL
    assert int(importance.q_heads.argmax()) == LOUD_HEAD and int(importance.q_heads.argmin()) == SILENT_HEAD
    assert int(importance.kv_groups.argmax()) == LOUD_HEAD // 3


def test_magnitude_wanda_flap_and_goa_rank_planted_units_first_and_last():
    model, adapter, layer = planted_model()
    stats = first_layer_statistics(model, adapter)
    q, k, v, o = (linear.weight for linear in adapter.attention_linears(layer))
    gate, up, down = (linear.weight for linear in adapter.mlp_linears(layer))
    assert_planted(magnitude_importance(q, k, v, o, gate, up, down, head_dim=8, group_size=3))
    assert_planted(wanda_sp_importance(o, down, stats, 8, 3))
    assert_planted(flap_uniform_importance(o, down, stats, "wifv", 8, 3))
    groups, channels = flap_adaptive_scores(o, down, stats, "wifv", 8, 3)
    assert int(groups.argmax()) == LOUD_HEAD // 3 and int(channels.argmin()) == QUIET_CHANNEL
    assert torch.allclose(channels.mean(), torch.zeros((), dtype=channels.dtype), atol=1e-9)  # standardised
    for rule in ("second-moment", "greedy"):
        goa = goa_importance(o, down, stats, LayerPlan(AttentionShape(2, 2), 48), 8, 3, rule)
        assert_planted(goa)


def test_contribution_gram_is_the_expected_inner_product_of_unit_outputs():
    x = torch.randn(500, 6, dtype=torch.float64)
    weight = torch.randn(4, 6, dtype=torch.float64)
    gram = contribution_gram(weight, x.T @ x / 500, unit_size=2)
    contributions = [x[:, 2 * u:2 * u + 2] @ weight[:, 2 * u:2 * u + 2].T for u in range(3)]
    explicit = torch.tensor([[(a * b).sum(1).mean() for b in contributions] for a in contributions], dtype=torch.float64)
    torch.testing.assert_close(gram, explicit)
    torch.testing.assert_close(second_moment_scores(weight, x.pow(2).mean(0)), contribution_gram(weight, x.T @ x / 500).diagonal())


def test_greedy_removal_removes_units_that_cancel_together():
    # Units 0 and 1 write opposite vectors (each loud, together nothing); unit 2 is quiet and independent.
    directions = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    gram = directions @ directions.T
    assert greedy_removal(gram, 1) == [2]  # alone, the quiet unit costs least
    assert sorted(greedy_removal(gram, 2, removed=[0])) == [1, 2] and greedy_removal(gram, 1, removed=[0]) == [1]


def test_greedy_head_scores_keep_a_gqa_legal_shape():
    torch.manual_seed(0)
    basis = torch.randn(6, 10, dtype=torch.float64)
    scales = torch.tensor([1.0, 0.1, 2.0, 3.0, 0.2, 0.3], dtype=torch.float64)
    gram = (basis * scales[:, None]) @ (basis * scales[:, None]).T
    q, groups = greedy_head_scores(gram, 3, AttentionShape(2, 2))
    kept = set(torch.topk(q, 4).indices.tolist())
    assert kept == {0, 2, 3, 5}  # one head leaves each group: the quietest there (1 and 4)
    q, groups = greedy_head_scores(gram, 3, AttentionShape(1, 3))
    loudest = int(gram.reshape(2, 3, 2, 3).sum(dim=(1, 3)).diagonal().argmax())  # the group that writes most
    assert int(groups.argmax()) == loudest
    assert set(torch.topk(q, 3).indices.tolist()) == {3 * loudest + i for i in range(3)}


def test_uniform_plan_keeps_edge_layers_dense_and_meets_the_ratio():
    model = tiny_model("llama", num_hidden_layers=6)
    base = adapter_for(model.config).dims(model.config)
    plans = uniform_plan(base, 0.7, 8, keep_first=1, keep_last=1)
    assert plans[0] == plans[-1] == LayerPlan.dense(base)
    # one attention shape; MLP widths at most one multiple apart, so the kept parameters meet the ratio from below
    assert len({plan.shape for plan in plans[1:-1]}) == 1 and len({plan.width for plan in plans[1:-1]}) <= 2
    assert max(plan.width for plan in plans[1:-1]) - min(plan.width for plan in plans[1:-1]) <= 8
    ratio = sum(plan_parameters(base, plan) for plan in plans) / dense_decoder_parameters(base)
    step = 4 * 3 * base.hidden_size * 8 / dense_decoder_parameters(base)  # what one more multiple in every layer costs
    assert 0.7 - step <= ratio <= 0.7


def test_uniform_plan_with_whole_attention_spends_the_cut_on_the_mlp():
    base = adapter_for(tiny_model("llama").config).dims(tiny_model("llama").config)
    plans = uniform_plan(base, 0.8, 8, attention_ratio=1.0)
    assert all(plan.shape == LayerPlan.dense(base).shape for plan in plans)
    assert all(plan.width < base.intermediate_size and plan.width % 8 == 0 for plan in plans)
    total = sum(plan_parameters(base, plan) for plan in plans)
    assert total / dense_decoder_parameters(base) == pytest.approx(0.8, abs=0.03)
    with pytest.raises(SculptError, match="attention_ratio"):
        uniform_plan(base, 0.3, 8, attention_ratio=1.0)


@pytest.mark.parametrize("ratio", [0.9, 0.7, 0.5])
def test_global_plan_spends_the_budget_on_the_best_units(ratio):
    base = adapter_for(tiny_model("llama").config).dims(tiny_model("llama").config)
    generator = torch.Generator().manual_seed(0)
    groups = [torch.randn(2, generator=generator) * 0.1 for _ in range(4)]
    channels = [torch.randn(64, generator=generator) for _ in range(4)]
    groups[2] += 5  # layer 2's attention is clearly the most important unit of all
    channels[1] -= 5  # layer 1's MLP the least
    plans = global_plan(base, ratio, groups, channels, 8, out_bias=True)
    total = sum(plan_parameters(base, plan, out_bias=True) for plan in plans)
    assert total / dense_decoder_parameters(base) == pytest.approx(ratio, abs=0.03)
    assert plans[2].shape == AttentionShape(2, 3)
    assert plans[1].width == min(plan.width for plan in plans)
    assert all(plan.width % 8 == 0 for plan in plans)


def test_input_statistics_from_samples():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    stats = InputStatistics.from_samples(x)
    torch.testing.assert_close(stats.mean, torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(stats.variance, torch.tensor([1.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(stats.second_moment, (x.T @ x / 2).double())
