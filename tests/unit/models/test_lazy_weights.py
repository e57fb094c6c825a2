"""A streamed source (pipeline/models/lazy_weights.py): weights on disk until a layer runs, the same numbers."""

import copy

import pytest
import torch

from pipeline.compress.calibration.layer_stream import GramAccumulator, LayerStream
from pipeline.compress.importance.obs_importance import (
    inverse_hessian_diag,
    inverse_hessian_diag_in_place,
    layer_importance,
)
from pipeline.compress.reform.sequential_reform import ReformSettings, reform_sculpted, reform_streamed
from pipeline.compress.width.uniform import proportional_shape, uniform_spec
from pipeline.errors import SculptError
from pipeline.models.adapters import adapter_for
from pipeline.models.lazy_weights import STREAM_ENV, is_streamed, materialised, stream_source
from pipeline.models.loading import load_model
from pipeline.models.slicing import slice_layer, slice_model, sliced_pieces
from tests.factories import tiny_checkpoint

WINDOWS = torch.randint(3, 100, (3, 20), generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=["qwen2", "gemma2"])  # q/k/v biases and an untied head; four norms, sliding layers, tied
def pair(request, tmp_path, monkeypatch):
    """The same checkpoint loaded in memory and streamed."""
    directory = tiny_checkpoint(tmp_path / "model", request.param, tie_word_embeddings=request.param != "qwen2")
    monkeypatch.setenv(STREAM_ENV, "never")
    memory = load_model(str(directory)).model
    monkeypatch.setenv(STREAM_ENV, "always")
    streamed = load_model(str(directory)).model
    return memory, streamed


def test_a_streamed_model_holds_no_weights_until_a_module_is_materialised(pair):
    memory, streamed = pair
    assert is_streamed(streamed) and not is_streamed(memory)
    assert all(p.device.type == "meta" for p in streamed.parameters())
    adapter = adapter_for(streamed.config)
    layer, dense = adapter.layers(streamed)[1], adapter.layers(memory)[1]
    with materialised(streamed, [layer]):
        with materialised(streamed, [layer]):  # nested: still held after the inner exit
            pass
        for (name, p), (_, q) in zip(layer.named_parameters(), dense.named_parameters(), strict=True):
            assert p.device.type == "cpu" and torch.equal(p, q), name
        assert all(p.device.type == "meta" for p in adapter.layers(streamed)[0].parameters())
    assert all(p.device.type == "meta" for p in layer.parameters())
    head = adapter.lm_head(streamed)
    with materialised(streamed, [head]):  # a tied head reads the embeddings' tensor
        assert torch.equal(head.weight, adapter.lm_head(memory).weight)


def test_the_layer_stream_gives_the_same_hidden_states_and_releases_each_layer(pair):
    memory, streamed = pair
    adapter = adapter_for(memory.config)
    streams = [LayerStream(m, adapter, WINDOWS) for m in (memory, streamed)]
    for a, b in zip(adapter.layers(memory), adapter.layers(streamed), strict=True):
        outputs = [s.run(layer) for s, layer in zip(streams, (a, b))]
        assert all(p.device.type == "cpu" for p in b.parameters())  # held between run and advance
        for s, out in zip(streams, outputs):
            s.advance(out)
        assert all(p.device.type == "meta" for p in b.parameters())
        assert all(torch.equal(x, y) for x, y in zip(*(s.hidden for s in streams), strict=True))


def test_in_place_importance_is_bit_identical_to_the_copying_one(pair):
    memory, streamed = pair
    adapter = adapter_for(memory.config)
    # with a callback the statistics stay readable (inverted from copies); without one they are inverted in place
    reference = layer_importance(memory, adapter, WINDOWS, progress=False, on_layer=lambda *_: None)
    for model in (memory, streamed):
        lean = layer_importance(model, adapter, WINDOWS, progress=False)
        for a, b in zip(reference, lean, strict=True):
            assert torch.equal(a.q_heads, b.q_heads) and torch.equal(a.kv_groups, b.kv_groups)
            assert torch.equal(a.mlp_channels, b.mlp_channels)


def test_in_place_statistics_give_the_same_numbers():
    acc = GramAccumulator()
    for seed in range(3):
        acc.add(torch.randn(40, 700, generator=torch.Generator().manual_seed(seed)))
    mean, squares = acc.mean(), acc.square_mean().clone()
    assert torch.equal(mean, mean.T)
    twin = copy.deepcopy(acc)
    assert torch.equal(twin.take_mean(), mean) and torch.equal(twin.square_mean(), squares)
    assert torch.equal(inverse_hessian_diag_in_place(acc), inverse_hessian_diag(mean))
    assert torch.equal(acc.square_mean(), squares)
    with pytest.raises(ValueError, match="already taken"):
        acc.take_mean()


@pytest.mark.parametrize("sequential", [True, False])
def test_streamed_reform_and_slicing_match_the_in_memory_ones(pair, sequential):
    memory, streamed = pair
    adapter = adapter_for(memory.config)
    base = adapter.dims(memory.config)
    importance = layer_importance(memory, adapter, WINDOWS, progress=False)
    spec = uniform_spec(base, importance, *proportional_shape(base, 0.6, 8))
    pieces = {}
    for _, tensors in sliced_pieces(streamed, spec):
        pieces.update(tensors)
    sliced = slice_model(memory, spec)
    assert pieces.keys() <= sliced.state_dict().keys()
    assert all(torch.equal(t, sliced.state_dict()[n]) for n, t in pieces.items())
    assert all(torch.equal(p, q) for p, q in zip(slice_layer(streamed, spec, 1).parameters(),
                                                  sliced.model.layers[1].parameters(), strict=True))

    settings = ReformSettings("least-squares", sequential=sequential)
    expected = reform_sculpted(sliced, memory, spec, WINDOWS, settings, progress=False)
    layers = {}
    outcome = reform_streamed(streamed, spec, WINDOWS, settings, progress=False,
                              on_layer=lambda position, tensors: layers.update({position: tensors}))
    got = {name: t for tensors in layers.values() for name, t in tensors.items()}
    assert got.keys() == expected.tensors.keys() and not outcome.tensors
    assert all(torch.equal(got[name], t) for name, t in expected.tensors.items())
    assert [r.error_after for r in outcome.reports] == [r.error_after for r in expected.reports]


def test_whole_model_paths_refuse_a_streamed_source_with_the_fix(pair):
    _, streamed = pair
    adapter = adapter_for(streamed.config)
    base = adapter.dims(streamed.config)
    spec = uniform_spec(base, layer_importance(pair[0], adapter, WINDOWS, progress=False),
                        *proportional_shape(base, 0.6, 8))
    with pytest.raises(SculptError, match="SCULPT_STREAM_WEIGHTS=never"):
        slice_model(streamed, spec)


def test_auto_streams_only_checkpoints_larger_than_a_quarter_of_memory(tmp_path, monkeypatch):
    directory = tiny_checkpoint(tmp_path / "model", "llama")
    monkeypatch.delenv(STREAM_ENV, raising=False)
    assert not stream_source(directory, torch.float32)
    monkeypatch.setattr("pipeline.models.lazy_weights.physical_memory", lambda: 1000)
    assert stream_source(directory, torch.float32)
    monkeypatch.setenv(STREAM_ENV, "sometimes")
    with pytest.raises(SculptError, match="auto"):
        stream_source(directory, torch.float32)
    monkeypatch.setenv(STREAM_ENV, "always")
    (directory / "model.safetensors").rename(directory / "weights.bin")
    with pytest.raises(SculptError, match="safetensors"):
        load_model(str(directory))
