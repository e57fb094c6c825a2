"""The family table: every family computes what transformers' own class computes, fused projections are
scored and sliced through views and stay fused, and the README's support table is the table."""

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import pipeline  # noqa: F401  (registers the Auto classes)
from pipeline.compress.importance.obs_importance import layer_importance
from pipeline.models.adapters import adapter_for
from pipeline.models.families import FAMILIES, FULL, SLIDING, SUPPORTED_FAMILIES, attention_kinds
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, LayerSpec, total_parameters
from tests.factories import FAMILIES as TESTED, SLIDING_WINDOW, tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[3]
LONG = torch.randint(3, 128, (2, 4 * SLIDING_WINDOW + 1), generator=torch.Generator().manual_seed(7))


def test_every_family_in_the_table_is_tested():
    assert set(TESTED) == set(SUPPORTED_FAMILIES) >= {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text",
                                                       "phi3"}


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_dense_sculpted_model_gives_the_family_models_logits_beyond_the_sliding_window(family):
    model = tiny_model(family)
    kinds = attention_kinds(model.config)
    if family in ("mistral", "phi3", "gemma2", "gemma3_text"):  # the tiny configs really slide
        assert SLIDING in kinds and LONG.shape[1] > SLIDING_WINDOW
    if family.startswith("gemma"):
        assert FULL in kinds  # mixed layouts stay mixed
    sculpted = slice_model(model, ArchSpec.dense(adapter_for(model.config).dims(model.config)))
    assert sculpted.config.layer_types == kinds
    with torch.no_grad():
        expected, got = model(LONG, use_cache=False).logits, sculpted(LONG, use_cache=False).logits
    assert (got - expected).abs().max().item() <= 1e-5
    # the window matters: with it widened, the family model computes something else
    if SLIDING in kinds:
        wide = tiny_model(family, sliding_window=LONG.shape[1] + 1)
        with torch.no_grad():
            assert (wide(LONG, use_cache=False).logits - expected).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_decoding_through_the_kv_cache_past_the_window_matches_the_family_model(family):
    model = tiny_model(family)
    sculpted = slice_model(model, ArchSpec.dense(adapter_for(model.config).dims(model.config)))
    prompt = LONG[:, :4]
    steps = 2 * SLIDING_WINDOW
    options = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True,
                   return_dict_in_generate=True, pad_token_id=0)
    ours, theirs = sculpted.generate(prompt, **options), model.generate(prompt, **options)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.logits, theirs.logits):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_parameter_count_of_a_cut_model_follows_the_family_layout(family):
    model = tiny_model(family)
    base = adapter_for(model.config).dims(model.config)
    spec = ArchSpec(base, (
        LayerSpec(source=0, num_heads=3, num_kv_heads=1, q_heads=(3, 4, 5), kv_heads=(1,), intermediate_size=16,
                  mlp_channels=tuple(range(16))),
        LayerSpec(source=2, attention="linear", intermediate_size=64, mlp_channels=tuple(range(64))),
        LayerSpec(source=3, num_heads=6, num_kv_heads=2, q_heads=tuple(range(6)), kv_heads=(0, 1), mlp="linear"),
    )).validate()
    assert sum(p.numel() for p in slice_model(model, spec).parameters()) == total_parameters(spec)


# ---- fused projections (phi3) ---------------------------------------------------
def _phi3_as_llama(phi3):
    """A llama with phi3's weights, its fused projections split: the same function, unfused."""
    config = tiny_config("llama", rms_norm_eps=phi3.config.rms_norm_eps, tie_word_embeddings=False)
    llama = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(phi3.config)
    state = {}
    for name, tensor in phi3.state_dict().items():
        if "qkv_proj" in name or "gate_up_proj" in name:
            continue
        state[name] = tensor
    for i, layer in enumerate(adapter.layers(phi3)):
        q, k, v, _ = adapter.attention_linears(layer)
        gate, up, _ = adapter.mlp_linears(layer)
        for part, linear in (("self_attn.q_proj", q), ("self_attn.k_proj", k), ("self_attn.v_proj", v),
                             ("mlp.gate_proj", gate), ("mlp.up_proj", up)):
            state[f"model.layers.{i}.{part}.weight"] = linear.weight
    llama.load_state_dict(state, strict=True)
    return llama


def test_fused_projections_are_read_through_views_and_score_as_their_unfused_twin():
    phi3 = tiny_model("phi3", sliding_window=None, tie_word_embeddings=False)
    llama = _phi3_as_llama(phi3)
    with torch.no_grad():
        torch.testing.assert_close(llama(LONG).logits, phi3(LONG).logits, atol=1e-5, rtol=0)
    adapter = adapter_for(phi3.config)
    q = adapter.attention_linears(adapter.layers(phi3)[0]).q
    assert q.weight.data_ptr() == adapter.layers(phi3)[0].self_attn.qkv_proj.weight.data_ptr()  # a view, not a copy
    windows = LONG[:, :12]
    for ours, twin in zip(layer_importance(phi3, adapter, windows, progress=False),
                          layer_importance(llama, adapter_for(llama.config), windows, progress=False)):
        torch.testing.assert_close(ours.q_heads, twin.q_heads, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.kv_groups, twin.kv_groups, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.mlp_channels, twin.mlp_channels, rtol=1e-4, atol=1e-6)


def test_a_sliced_phi3_keeps_its_fused_projections_with_the_kept_rows_of_each_part():
    phi3 = tiny_model("phi3")
    base = adapter_for(phi3.config).dims(phi3.config)
    channels = (1, 5, 7, 30, 63)
    spec = ArchSpec(base, (LayerSpec(source=1, num_heads=3, num_kv_heads=1, q_heads=(3, 4, 5), kv_heads=(1,),
                                     intermediate_size=len(channels), mlp_channels=channels),)).validate()
    state = slice_model(phi3, spec).state_dict()
    modules = {name.rsplit(".", 2)[-2] for name in state}
    assert {"qkv_proj", "gate_up_proj"} <= modules and not modules & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    source = adapter_for(phi3.config).layers(phi3)[1]
    hd = base.head_dim
    q = source.self_attn.qkv_proj.weight[:6 * hd][3 * hd:6 * hd]
    k = source.self_attn.qkv_proj.weight[6 * hd:8 * hd][hd:2 * hd]
    v = source.self_attn.qkv_proj.weight[8 * hd:][hd:2 * hd]
    assert torch.equal(state["model.layers.0.self_attn.qkv_proj.weight"], torch.cat([q, k, v]))
    gate, up = source.mlp.gate_up_proj.weight.chunk(2)
    index = torch.tensor(channels)
    assert torch.equal(state["model.layers.0.mlp.gate_up_proj.weight"], torch.cat([gate[index], up[index]]))
    assert state["model.layers.0.mlp.down_proj.weight"].shape == (base.hidden_size, len(channels))


# ---- the README's support table ------------------------------------------------------
def test_the_readme_support_table_is_the_family_table():
    text = (REPO / "README.md").read_text()
    section = text.split("## Supported model families", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", section.split("|---", 1)[1], flags=re.M)
    assert [name for name, _ in rows] == list(FAMILIES)
    assert [examples for _, examples in rows] == [family.examples for family in FAMILIES.values()]
