"""Importance math (Phi = W^2 / [(2XX^T)^-1]_jj), unit selection and the uniform method."""

import pytest
import torch

from pipeline.compress.importance.obs_importance import (attention_scores, column_scores, inverse_hessian_diag, layer_importance,
                                          row_scores)
from pipeline.compress.registry import MethodContext
from pipeline.compress.width.legal_widths import AttentionShape, attention_shapes, keep_heads, snap_width, top_units
from pipeline.compress.width.uniform import UniformOptions, candidate_shapes, proportional_shape, run_uniform
from pipeline.models.adapters import adapter_for
from pipeline.models.spec import ArchSpec, decoder_ratio
from pipeline.compress.importance.obs_importance import LayerImportance
from tests.factories import tiny_model


def test_inverse_hessian_diagonal_matches_an_explicit_inverse():
    x = torch.randn(200, 6, dtype=torch.float64)
    second = x.T @ x / 200
    hessian = 2 * second
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(inverse_hessian_diag(second), torch.linalg.inv(damped).diagonal())


def test_row_and_column_scores_sum_the_obs_importance():
    weight = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    inv = torch.tensor([0.5, 2.0], dtype=torch.float64)
    phi = torch.tensor([[1 / 0.5, 4 / 2.0], [9 / 0.5, 16 / 2.0]], dtype=torch.float64)
    torch.testing.assert_close(row_scores(weight, inv), phi.sum(1))
    torch.testing.assert_close(column_scores(weight, inv), phi.sum(0))


def test_a_kv_group_scores_its_own_rows_plus_its_query_heads():
    hd, d = 2, 4
    q, o = torch.ones(6 * hd, d), torch.ones(d, 6 * hd)
    k, v = torch.zeros(2 * hd, d), torch.zeros(2 * hd, d)
    q[0:hd] *= 3  # head 0 (group 0) matters more
    ones = torch.ones(d, dtype=torch.float64)
    q_heads, groups = attention_scores(q, k, v, o, ones, torch.ones(6 * hd, dtype=torch.float64), hd, 3)
    assert q_heads.argmax() == 0
    torch.testing.assert_close(groups, q_heads.reshape(2, 3).sum(1))


def test_keep_heads_never_breaks_the_gqa_mapping():
    model = tiny_model("llama")
    base = adapter_for(model.config).dims(model.config)
    importance = LayerImportance(torch.tensor([1.0, 9, 2, 8, 7, 3]), torch.tensor([1.0, 5.0]), torch.ones(64))
    q_heads, kv_heads = keep_heads(importance, base, AttentionShape(1, 2))
    assert kv_heads == (1,) and q_heads == (3, 4)
    q_heads, kv_heads = keep_heads(importance, base, AttentionShape(2, 1))
    assert kv_heads == (0, 1) and q_heads == (1, 3)


def test_widths_snap_to_multiples_and_never_exceed_the_source():
    assert snap_width(1100, 64, 1536) == 1088
    assert snap_width(1530, 64, 1536) == 1536
    assert snap_width(2000, 64, 1536) == 1536
    assert snap_width(20, 64, 1536) == 0
    assert top_units(torch.tensor([5.0, 1, 9, 3]), 2) == (0, 2)


def test_attention_shapes_are_every_legal_gqa_cut():
    base = adapter_for(tiny_model("llama").config).dims(tiny_model("llama").config)
    shapes = attention_shapes(base)
    assert {(s.num_kv_heads, s.per_group) for s in shapes} == {(g, p) for g in (1, 2) for p in (1, 2, 3)}


def context(model, n=4, length=16):
    adapter = adapter_for(model.config)
    windows = torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(1))
    return MethodContext(model=model, tokenizer=None, adapter=adapter, base=adapter.dims(model.config),
                         calibration=windows, progress=False)


def test_importance_covers_every_unit_of_every_layer(family_model):
    scores = layer_importance(family_model, adapter_for(family_model.config), context(family_model).calibration)
    assert len(scores) == 4
    assert scores[0].q_heads.shape == (6,) and scores[0].kv_groups.shape == (2,)
    assert scores[0].mlp_channels.shape == (64,)
    assert all(torch.isfinite(s.mlp_channels).all() and (s.mlp_channels > 0).all() for s in scores)


@pytest.mark.parametrize("split", ["calibrated", "proportional"])
@pytest.mark.parametrize("ratio", [1.0, 0.7, 0.5])
def test_uniform_method_meets_the_ratio_from_below_with_one_shape_in_every_layer(split, ratio):
    model = tiny_model("llama")
    result = run_uniform(context(model), ratio, UniformOptions(mlp_multiple=8, split=split))
    spec = result.spec.validate()
    assert len({(l.num_heads, l.num_kv_heads) for l in spec.layers}) == 1
    widths = [l.intermediate_size for l in spec.layers]
    assert max(widths) - min(widths) <= 8  # one snapped width, a multiple wider where the budget pays for it
    assert ratio - 0.05 <= decoder_ratio(spec) <= ratio + 1e-9
    if ratio == 1.0:
        assert spec == ArchSpec(spec.base, ArchSpec.dense(spec.base).layers, notes=spec.notes)


def test_calibrated_split_picks_the_candidate_with_the_lowest_calibration_perplexity():
    model = tiny_model("llama")
    result = run_uniform(context(model), 0.6, UniformOptions(mlp_multiple=8))
    tried = result.metrics["splits_tried"]
    assert len(tried) == len(candidate_shapes(context(model).base, 0.6, 8)) > 1
    assert result.metrics["split_calibration_ppl"] == pytest.approx(min(tried.values()), rel=1e-4)


def test_proportional_split_rounds_attention_to_whole_heads():
    base = adapter_for(tiny_model("llama").config).dims(tiny_model("llama").config)
    shape, widths = proportional_shape(base, 0.5, 8)
    assert shape.num_heads * 2 <= 6 + 2 and all(width % 8 == 0 for width in widths)


@pytest.mark.parametrize("split", ["calibrated", "proportional"])
def test_a_ratio_below_the_smallest_uniform_layer_is_a_clear_error(split):
    from pipeline.errors import SculptError

    model = tiny_model("llama")  # MLP width 64: one multiple of 64 channels is the whole MLP
    with pytest.raises(SculptError, match=r"ratio 0.2 is too small .* use a larger --ratio"):
        run_uniform(context(model), 0.2, UniformOptions(mlp_multiple=64, split=split))
