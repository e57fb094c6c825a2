"""LLM-Streamline's stability metric: the paper's formula, its next-token items, and the method's report."""

import math

import pytest
import torch

from pipeline.compress import MethodContext, get_method, parse_options
from pipeline.compress.depth.stability import (
    choose,
    next_token_options,
    next_token_stability,
    stability,
)
from pipeline.compress.depth.streamline import (
    StreamlineOptions,
    replacement_layer,
    streamline_spec,
)
from pipeline.errors import SculptError
from pipeline.models.adapters import adapter_for
from pipeline.models.spec import decoder_ratio
from tests.factories import tiny_model
from tests.threads import one_thread  # noqa: F401  (autouse)


def test_stability_weighs_the_agreeing_items_by_the_softmax_of_the_original_spread():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 6.0], [2.0, 0.0, 2.0], [0.0, 1.0, 2.0]])
    spread = [0.0, math.sqrt(6.0), math.sqrt(8 / 9), math.sqrt(2 / 3)]  # population std of each row
    weights = [math.exp(s) / sum(math.exp(t) for t in spread) for s in spread]
    original = torch.tensor([True, True, False, False])
    pruned = torch.tensor([False, True, True, False])  # agrees on items 1 (both right) and 3 (both wrong)
    assert stability(original, pruned, scores) == pytest.approx(weights[1] + weights[3], abs=1e-12)
    # The released script sums the first m weights (m = agreeing items); the stated formula is not that.
    assert abs(stability(original, pruned, scores) - (weights[0] + weights[1])) > 0.05
    assert stability(original, original, scores) == pytest.approx(1.0)
    assert stability(original, ~original, scores) == 0.0


def test_stability_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="options >= 2"):
        stability(torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="correctness flags for 4 items"):
        stability(torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="between 2 and the vocabulary size 5"):
        next_token_options(torch.zeros(2, 5), torch.tensor([0, 1]), 6)


def test_the_options_are_the_true_token_and_the_likeliest_others():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0], [9.0, 1.0, 2.0, 8.0, 7.0]])
    targets = torch.tensor([2, 4])
    options = next_token_options(logits, targets, 3)
    assert options.tolist() == [[2, 1, 3], [4, 0, 3]]
    scores, right = choose(logits, options)
    assert right.tolist() == [False, False]
    assert torch.allclose(scores, -torch.log_softmax(logits, -1).gather(1, options))
    _, right = choose(torch.tensor([[0.0, 1.0, 9.0, 3.0, -1.0]]), options[:1])
    assert right.tolist() == [True]


def test_a_model_is_perfectly_stable_against_itself_and_less_against_a_stranger():
    model, stranger = (tiny_model("llama", seed=s, tie_word_embeddings=False) for s in (0, 1))  # untied: not echoes
    # Text the model writes itself (greedy), so it is right everywhere: on random text both models would be
    # wrong almost everywhere, which counts as agreeing.
    starts = torch.tensor([[5], [17], [40]])
    windows = model.generate(starts, max_new_tokens=23, min_new_tokens=23, do_sample=False,
                             attention_mask=torch.ones_like(starts))
    same = next_token_stability(model, model, windows, options=4)
    assert same.stability == pytest.approx(1.0) and same.per_window == pytest.approx([1.0] * 3)
    assert same.items == 3 * 23 and same.original_accuracy == same.pruned_accuracy == 1.0
    other = next_token_stability(model, stranger, windows, options=4)
    assert other.stability < 0.7 and other.pruned_accuracy < 0.7 and len(other.per_window) == 3
    with pytest.raises(ValueError, match="length >= 2"):
        next_token_stability(model, model, windows[:, :1])


def _context(model, n=8, length=32):
    adapter = adapter_for(model.config)
    calibration = torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(0))
    return MethodContext(model, None, adapter, adapter.dims(model.config), calibration, progress=False)


def _run(ctx, ratio, **options):
    method = get_method("streamline")
    return method.run(ctx, ratio, parse_options(method, options))


def _silence(model, layer):
    adapter = adapter_for(model.config)
    block = adapter.layers(model)[layer]
    with torch.no_grad():
        adapter.attention_linears(block).o.weight.zero_()
        adapter.mlp_linears(block).down.weight.zero_()


def test_streamline_reports_stability_on_the_held_out_windows():
    model = tiny_model("llama", num_hidden_layers=6)
    _silence(model, 2)
    _silence(model, 3)  # an identity span: its linear replacement computes what the dense model computes
    ctx = _context(model)
    ratio = decoder_ratio(streamline_spec(ctx, 0, 2, replacement_layer(ctx, 0, StreamlineOptions(replacement="linear"))))
    planted = _run(ctx, ratio, replacement="linear", held_out_windows=3).metrics
    assert planted["stability"] == pytest.approx(1.0, abs=1e-6) and len(planted["stability_per_window"]) == 3
    assert planted["stability_items"] == 3 * 31 and planted["stability_options"] == 4

    unplanted = _run(_context(tiny_model("llama", num_hidden_layers=6)), 0.6, replacement="linear").metrics
    assert 0.0 <= unplanted["stability"] <= 1.0 and unplanted["stability_items"] == 4 * 31
    assert 0.0 <= unplanted["stability_pruned_accuracy"] <= 1.0


def test_too_many_stability_options_is_a_clear_error():
    ctx = _context(tiny_model("llama"))
    with pytest.raises(SculptError, match="stability_options 129 exceeds the vocabulary"):
        _run(ctx, 0.6, stability_options=129)


def test_chunking_the_positions_changes_nothing(monkeypatch):
    import pipeline.compress.depth.stability as module

    model, other = (tiny_model("llama", seed=s, tie_word_embeddings=False) for s in (0, 2))
    windows = torch.randint(3, 128, (2, 30), generator=torch.Generator().manual_seed(4))
    whole = next_token_stability(model, other, windows)
    monkeypatch.setattr(module, "_CHUNK", 7)
    assert next_token_stability(model, other, windows) == whole
