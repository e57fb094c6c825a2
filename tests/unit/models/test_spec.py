"""ArchSpec: validation that names the problem, JSON round trips, parameter arithmetic."""

from dataclasses import replace

import pytest

from pipeline.models.spec import (ArchSpec, BaseDims, LayerSpec, SpecError, decoder_ratio, layer_parameters,
                                  total_parameters)

BASE = BaseDims(model_type="llama", num_layers=3, hidden_size=48, num_heads=6, num_kv_heads=2, head_dim=8,
                intermediate_size=64, vocab_size=128)


def spec_with(**changes) -> ArchSpec:
    dense = ArchSpec.dense(BASE)
    return ArchSpec(BASE, (replace(dense.layers[0], **changes),) + dense.layers[1:])


def test_dense_spec_is_valid_and_keeps_everything():
    spec = ArchSpec.dense(BASE).validate()
    assert decoder_ratio(spec) == 1.0
    assert spec.removed_layers == [] and spec.attention_layers == [0, 1, 2]


@pytest.mark.parametrize("changes, words", [
    (dict(num_heads=4, q_heads=(0, 1, 2, 3), num_kv_heads=2), "break the GQA mapping"),
    (dict(num_heads=3, q_heads=(0, 1, 3), num_kv_heads=2, kv_heads=(0, 1)), "split evenly"),
    (dict(num_kv_heads=3, kv_heads=(0, 1, 1)), "KV heads"),
    (dict(intermediate_size=2, mlp_channels=(5, 5)), "distinct"),
    (dict(intermediate_size=2, mlp_channels=(5, 99)), "out of range"),
    (dict(attention="dropped"), "not one of"),
    (dict(attention="skip"), "heads or a bias are given"),
    (dict(mlp="keep", intermediate_size=0, mlp_channels=()), "use 'skip'"),
])
def test_invalid_specs_name_the_problem(changes, words):
    with pytest.raises(SpecError, match=words):
        spec_with(**changes).validate()


def test_query_heads_follow_the_order_of_kept_kv_groups():
    # groups hold heads 0-2 and 3-5; keeping group 1 before group 0 lists its heads first
    spec_with(num_heads=4, num_kv_heads=2, kv_heads=(1, 0), q_heads=(3, 5, 0, 2)).validate()
    with pytest.raises(SpecError, match="GQA"):
        spec_with(num_heads=4, num_kv_heads=2, kv_heads=(1, 0), q_heads=(0, 2, 3, 5)).validate()


def test_a_model_needs_an_attention_layer():
    layers = tuple(LayerSpec(source=i, attention="skip", mlp="skip") for i in range(3))
    with pytest.raises(SpecError, match="attention"):
        ArchSpec(BASE, layers).validate()


def test_json_round_trip_with_and_without_indices():
    spec = spec_with(num_heads=2, num_kv_heads=1, kv_heads=(1,), q_heads=(3, 4), intermediate_size=3,
                     mlp_channels=(1, 7, 9), attention_out_bias=True)
    assert ArchSpec.from_json(spec.to_json()) == spec
    counts = ArchSpec.from_json(spec.to_json(with_indices=False))
    assert counts == spec.without_indices() and not counts.has_indices


def test_foreign_json_is_refused():
    with pytest.raises(SpecError, match="not an llm-sculpt arch spec"):
        ArchSpec.from_json('{"layers": []}')


def test_parameter_arithmetic():
    d, hd = 48, 8
    keep = LayerSpec(source=0, num_heads=3, num_kv_heads=1, intermediate_size=10)
    assert layer_parameters(BASE, keep) == (d * 3 * hd * 2 + d * hd * 2 + d) + (3 * d * 10 + d)
    linear = LayerSpec(source=0, attention="linear", mlp="skip")
    assert layer_parameters(BASE, linear) == d * d + d
    spec = ArchSpec(BASE, (keep, replace(linear, source=1)))
    assert total_parameters(spec) == 128 * d + d + layer_parameters(BASE, keep) + d * d + d
