"""The latency table on a family with a RoPE base per attention kind (gemma3: sliding and global layers)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.compress.search.latency_table import measure_latency_table, shape_key
from pipeline.compress.width.legal_widths import AttentionShape, attention_shapes
from pipeline.models.adapters import FamilyAdapter, adapter_for
from pipeline.models.families import FULL, SLIDING
from tests.factories import tiny_model


@pytest.fixture(scope="module")
def gemma3():
    return tiny_model("gemma3_text", num_hidden_layers=6)


def test_the_rotary_table_of_each_kind_is_the_family_models_own(gemma3):
    adapter = adapter_for(gemma3.config)
    rotary = gemma3.model.rotary_emb
    hidden, positions = torch.randn(1, 9, 48), torch.arange(9).unsqueeze(0)
    full, sliding = (adapter.rotary_table(rotary, hidden, positions, kind) for kind in (FULL, SLIDING))
    for kind, (cos, sin) in ((FULL, full), (SLIDING, sliding)):
        want_cos, want_sin = rotary(hidden, positions, kind)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    # The tiny config keeps gemma3's two bases, so the kinds really differ past position 0.
    assert not torch.allclose(full[1], sliding[1])
    with pytest.raises(ValueError, match="attention kind 'chunked'"):
        adapter.rotary_table(rotary, hidden, positions, "chunked")


def test_a_family_with_one_rope_base_gives_one_table_for_both_kinds():
    model = tiny_model("mistral")
    adapter, rotary = adapter_for(model.config), model.model.rotary_emb
    hidden, positions = torch.randn(1, 5, 48), torch.arange(5).unsqueeze(0)
    want = rotary(hidden, position_ids=positions)
    for kind in (FULL, SLIDING):
        assert all(torch.equal(a, b) for a, b in zip(adapter.rotary_table(rotary, hidden, positions, kind), want))


def test_a_latency_table_is_measured_on_gemma3_with_each_layers_own_rope(gemma3, monkeypatch):
    asked = []
    original = FamilyAdapter.rotary_table

    def recording(self, rotary, hidden, positions, kind=FULL):
        asked.append(kind)
        return original(self, rotary, hidden, positions, kind)

    monkeypatch.setattr(FamilyAdapter, "rotary_table", recording)
    torch.manual_seed(0)
    base = adapter_for(gemma3.config).dims(gemma3.config)
    table = measure_latency_table(gemma3, base, [32, 64], context=16, stream_bytes=2**16, repeats=1, steps=2,
                                  progress=False)
    assert set(table.attention) == {shape_key(shape) for shape in attention_shapes(base)}
    assert set(table.mlp) == {32, 64} and table.mlp[32] <= table.mlp[64]
    assert all(math.isfinite(t) and t > 0 for t in [*table.attention.values(), *table.mlp.values(), table.dense_step])
    # The table predicts the dense model's measured step exactly (its constant is what the layers leave).
    dense = [(AttentionShape(base.num_kv_heads, base.group_size), base.intermediate_size)] * base.num_layers
    assert table.step(dense) == pytest.approx(table.dense_step)
    # The timed stacks hold sliding and global layers (sources cycle over the model), each fed its kind's RoPE.
    assert {FULL, SLIDING} <= set(asked)
