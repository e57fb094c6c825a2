"""Depth and sublayer methods on tiny random models: each selection rule finds what was planted,
the ratio rule, and every method's spec slices, reloads and generates."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import pipeline  # noqa: F401  (registers the Auto classes)
from pipeline.compress import MethodContext, get_method, parse_options
from pipeline.compress.depth.removal_counting import spec_without
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.depth.block_removal import BlockSkipScorer
from pipeline.compress.calibration.stream_similarity import most_similar_span, sublayer_similarity
from pipeline.compress.depth.streamline import StreamlineOptions, replacement_layer, streamline_spec
from pipeline.errors import SculptError
from pipeline.models.adapters import adapter_for
from pipeline.models.slicing import slice_model
from pipeline.models.spec import decoder_ratio
from pipeline.stages.slice import apply_weights
from pipeline.paths import cache_root
from pipeline.stages.method_store import FolderStore
from tests.factories import tiny_model
from tests.threads import one_thread  # noqa: F401  (autouse)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """SLEB keeps its greedy order in the shared cache: keep it inside the test's tmp_path."""
    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "cache"))


def windows(n=8, length=32, seed=0):
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def context(model, calibration=None, **fields):
    adapter = adapter_for(model.config)
    calibration = windows() if calibration is None else calibration
    fields.setdefault("cache", FolderStore(cache_root()))  # the search stage gives methods the shared cache
    return MethodContext(model, None, adapter, adapter.dims(model.config), calibration, progress=False, **fields)


def run(name, ctx, ratio, **options):
    method = get_method(name)
    return method.run(ctx, ratio, parse_options(method, options))


def silence(model, layer, attention=True, mlp=True):
    """Zero a block's output projections: the sublayer then adds nothing to the residual stream."""
    adapter = adapter_for(model.config)
    block = adapter.layers(model)[layer]
    with torch.no_grad():
        if attention:
            adapter.attention_linears(block).o.weight.zero_()
        if mlp:
            adapter.mlp_linears(block).down.weight.zero_()


def one_attention_ratio(ctx):
    return decoder_ratio(spec_without(ctx.base, attention=[0]))


# ---- the shared measurement ------------------------------------------------------------------
def test_similarity_sees_a_silenced_sublayer_as_an_identity():
    model = tiny_model("llama")
    silence(model, 1, mlp=False)
    silence(model, 2, attention=False)
    ctx = context(model)
    similarity = sublayer_similarity(model, ctx.adapter, ctx.calibration, progress=False)
    assert similarity.attention[1] == pytest.approx(1.0, abs=1e-6) and similarity.mlp[2] == pytest.approx(1.0, abs=1e-6)
    assert max(similarity.attention[0], similarity.attention[2], similarity.attention[3]) < 0.999
    assert similarity.block_influence[1] > 1e-3  # its MLP still works


# ---- ShortGPT, LLM-Drop, Tyukin ---------------------------------------------------------------
def test_shortgpt_removes_the_planted_identity_block():
    model = tiny_model("llama")
    silence(model, 2)
    result = run("shortgpt", context(model), 0.75)
    assert result.spec.removed_layers == [2]
    assert result.metrics["block_influence"][2] == pytest.approx(0.0, abs=1e-6)


def test_attention_drop_drops_the_planted_near_zero_attention():
    model = tiny_model("llama")
    silence(model, 1, mlp=False)
    ctx = context(model)
    result = run("attn-drop", ctx, one_attention_ratio(ctx))
    assert [l.source for l in result.spec.layers if l.attention == "skip"] == [1]
    assert result.spec.removed_layers == []


@pytest.mark.parametrize("keep_final, expected", [(False, [2, 3]), (True, [1, 2])])
def test_attention_skip_last_skips_the_deepest_attention(keep_final, expected):
    ctx = context(tiny_model("llama"))
    ratio = decoder_ratio(spec_without(ctx.base, attention=[0, 1]))
    result = run("attn-skip-last", ctx, ratio, keep_final=keep_final)
    assert [l.source for l in result.spec.layers if l.attention == "skip"] == expected


@pytest.mark.parametrize("name", ["attn-drop", "attn-skip-last"])
def test_attention_methods_name_the_lowest_reachable_ratio(name):
    ctx = context(tiny_model("llama"))
    floor = decoder_ratio(spec_without(ctx.base, attention=[1, 2, 3]))  # one attention sublayer must stay
    with pytest.raises(SculptError, match=f"keeps {floor:.4f}.*--ratio {-(-floor * 1000 // 1) / 1000:g}"):
        run(name, ctx, floor - 0.01)
    assert decoder_ratio(run(name, ctx, floor).spec) == pytest.approx(floor)


@pytest.mark.parametrize("name", ["shortgpt", "attn-drop"])
@pytest.mark.parametrize("target", [0.97, 0.9, 0.8, 0.7])
def test_the_fewest_units_are_removed_that_bring_the_ratio_to_the_target(name, target):
    ctx = context(tiny_model("llama", num_hidden_layers=8))
    achieved = decoder_ratio(run(name, ctx, target).spec)
    unit = 1 / 8 if name == "shortgpt" else 1 - one_attention_ratio(ctx)
    assert target - unit < achieved <= target + 1e-9


# ---- SLEB -------------------------------------------------------------------------------------
def model_and_its_own_text(seed=0, layers=5):
    """A sharp random model and text sampled from it: the intact model is what predicts the text best."""
    model = tiny_model("llama", seed=seed, num_hidden_layers=layers, initializer_range=0.3)
    torch.manual_seed(seed)
    with torch.no_grad():
        text = model.generate(torch.full((8, 1), 5), do_sample=True, top_k=0, max_new_tokens=47, min_new_tokens=47,
                              pad_token_id=0)
    return model, text


@pytest.mark.parametrize("seed", [0, 1])
def test_sleb_removes_the_planted_harmless_block_first(seed):
    model, text = model_and_its_own_text(seed)
    silence(model, 2)
    result = run("sleb", context(model, text), 0.8)
    assert result.spec.removed_layers == [2]


def test_sleb_scores_a_removal_by_the_perplexity_of_the_smaller_model():
    model, text = model_and_its_own_text()
    ctx = context(model, text)
    scorer = BlockSkipScorer(model, ctx.adapter, text, batch_size=3)
    inputs = scorer.block_inputs([0, 1, 3, 4])
    expected = calibration_perplexity(slice_model(model, spec_without(ctx.base, layers=[1, 2])), text)
    assert torch.tensor(scorer.nll_from(inputs[1], [3, 4])).exp().item() == pytest.approx(expected, rel=1e-5)


def test_sleb_reuses_its_greedy_order_only_for_the_same_model_and_windows(monkeypatch):
    model, text = model_and_its_own_text()
    first = run("sleb", context(model, text), 0.6)
    calls = []
    original = BlockSkipScorer.nll_from
    monkeypatch.setattr(BlockSkipScorer, "nll_from", lambda *a: calls.append(1) or original(*a))
    again = run("sleb", context(model, text), 0.8)  # fewer rounds, all on record: nothing is recomputed
    assert again.metrics["removal_order"] == first.metrics["removal_order"][:1] and not calls
    silence(model, 3)
    run("sleb", context(model, text), 0.8)  # other weights: computed afresh
    assert calls


# ---- LLM-Streamline ---------------------------------------------------------------------------
def test_streamline_replaces_the_planted_redundant_span():
    model = tiny_model("llama", num_hidden_layers=6)
    silence(model, 2)
    silence(model, 3)
    ctx = context(model)
    options = StreamlineOptions(replacement="linear")
    ratio = decoder_ratio(streamline_spec(ctx, 0, 2, replacement_layer(ctx, 0, options)))
    span = most_similar_span(model, ctx.adapter, ctx.calibration, 2, progress=False)
    assert span.start == 2 and span.similarities[2] == pytest.approx(1.0, abs=1e-6)
    result = run("streamline", ctx, ratio, replacement="linear")
    assert result.spec.removed_layers == [3]
    replaced = [l for l in result.spec.layers if l.source == 2][0]
    assert (replaced.attention, replaced.mlp) == ("skip", "linear")


def test_the_linear_fit_recovers_a_planted_linear_map():
    from pipeline.compress.depth.replacement_fit import fit_linear

    norm = adapter_for(tiny_model().config).mlp_norm(adapter_for(tiny_model().config).layers(tiny_model())[0])
    planted = torch.randn(48, 48, generator=torch.Generator().manual_seed(1)) / 7
    x = torch.randn(2000, 48, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        y = x + norm(x) @ planted.T
    proj = torch.nn.Linear(48, 48, bias=False)
    fit_linear(norm, proj, x, y, damping=1e-9)
    torch.testing.assert_close(proj.weight, planted, atol=1e-4, rtol=0)


def test_the_ffn_replacement_learns_the_span_better_than_its_initialisation():
    model = tiny_model("llama", num_hidden_layers=5)
    for layer in (1, 2, 3, 4):  # attention-free spans: a token-wise map that an FFN can learn
        silence(model, layer, mlp=False)
    ctx = context(model, windows(16, 32))
    ratio = decoder_ratio(streamline_spec(ctx, 0, 3, replacement_layer(ctx, 0, StreamlineOptions())))
    result = run("streamline", ctx, ratio, epochs=8, lr=3e-3, batch_tokens=64)
    log = result.metrics["training"]
    assert result.metrics["held_out_relative_error"] == pytest.approx(min(e["held_out"] for e in log))
    assert result.metrics["held_out_relative_error"] < 0.6 * log[0]["held_out"] < 0.6


# ---- every method: a model that slices, reloads and generates ---------------------------------
@pytest.mark.parametrize("name, ratio, options", [
    ("shortgpt", 0.5, {}), ("sleb", 0.5, {}), ("attn-drop", 0.9, {}), ("attn-skip-last", 0.9, {}),
    ("streamline", 0.6, {"replacement": "linear"}), ("streamline", 0.6, {"epochs": 2, "ffn_width": 16}),
])
def test_every_method_gives_a_model_that_reloads_and_generates(name, ratio, options, tmp_path):
    model = tiny_model("llama", num_hidden_layers=6)
    result = run(name, context(model), ratio, **options)
    assert decoder_ratio(result.spec) <= ratio + 1e-9
    sliced = slice_model(model, result.spec)
    apply_weights(sliced, result.weights, name)
    sliced.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = windows(1, 5)
    generated = reloaded.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 13)
    assert torch.equal(generated, sliced.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                                  pad_token_id=0))
    if result.weights:  # the fitted replacement is what the reloaded model holds
        state = reloaded.state_dict()
        for key, tensor in result.weights.items():
            torch.testing.assert_close(state[key], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("flags", [
    ["--method", "streamline", "--replacement", "linear", "--ratio", "0.7"],
    ["--method", "streamline", "--replacement", "ffn", "--ratio", "0.6"], ["--method", "shortgpt", "--ratio", "0.5"],
    ["--method", "sleb", "--ratio", "0.6"], ["--method", "attn-drop", "--ratio", "0.9"],
    ["--method", "attn-skip-last", "--ratio", "0.9"],
])
def test_sculpt_run_gives_a_sliced_model_that_reloads_and_generates(flags, tmp_path):
    import json

    from click.testing import CliRunner

    from pipeline.cli import cli
    from tests.factories import light_validate_recipe, tiny_checkpoint

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(300)))
    model = tiny_checkpoint(tmp_path / "model", num_hidden_layers=6)
    args = ["run", str(light_validate_recipe(tmp_path)), "--model", str(model), "--calib-corpus",
            str(corpus), "--eval-corpus", str(corpus), "--calib-samples", "8", "--calib-seqlen", "32", "--seq-len", "64",
            "--max-windows", "2", "--out", str(tmp_path / "a"), "--quiet", *flags]
    result = CliRunner().invoke(cli, args, env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output
    version = tmp_path / "a" / "v0001"
    records = {s["name"]: s for s in json.loads((version / "manifest.json").read_text())["stages"]}
    method, ratio = flags[1], float(flags[-1])
    assert records["search"]["options"]["method"] == method
    if "--replacement" in flags:
        assert records["search"]["options"]["method_options"] == {"replacement": flags[3]}
    assert records["search"]["metrics"]["decoder_ratio"] <= ratio + 1e-9
    assert records["validate"]["status"] == "done" and records["validate"]["metrics"]["ppl"] > 1
    fitted = "search/weights.safetensors" in records["slice"]["metrics"]["weights_applied"]
    assert fitted == (method == "streamline")
    arch = json.loads((version / "search" / "arch.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(version / "slice" / "model").eval()
    assert len(reloaded.model.layers) == len(arch["layers"])
    kept = len(reloaded.config.attention_layers) if method.startswith("attn") else len(arch["layers"])
    assert kept < 6  # layers or attention sublayers really went
    assert reloaded.generate(windows(1, 4), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                             pad_token_id=0).shape == (1, 7)
