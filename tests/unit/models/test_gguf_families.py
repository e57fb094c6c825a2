"""GGUF files of every family transformers' GGUF loader reads load through `load_model`, with the logits of the
transformers model whose weights they hold.

Each test writes a tiny GGUF with the `gguf` package as llama.cpp's converter lays one out (its tensor names, the
metadata keys transformers maps back to a config, gemma's norms stored as 1 + w, llama's q/k rows permuted for
its rotary layout, a minimal sentencepiece vocabulary), then loads it as `sculpt run --model FILE.gguf` does:
dequantised once into the cache, checked against the family table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.adapters import adapter_for, gguf_config_fixes
from pipeline.models.families import SUPPORTED_FAMILIES
from pipeline.models.loading import load_model
from tests.factories import tiny_model

gguf = pytest.importorskip("gguf")

# The llama.cpp architecture each family is written as (mistral is llama.cpp's llama, told apart by the name).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
                 "gemma2": "gemma2", "gemma3_text": "gemma3"}
# What transformers' GGUF loader does not read back is left to the family config's defaults, so the source model
# keeps the defaults too: phi3's sliding window (none), qwen3's head_dim (128), gemma3's layer pattern (5 sliding :
# 1 full). The README's family table says so.
SOURCE_OVERRIDES = {"phi3": {"sliding_window": None}, "mistral": {"sliding_window": None},
                    "qwen3": {"head_dim": 128}, "gemma3_text": {"layer_types": None, "num_hidden_layers": 7}}
# A mistral GGUF is llama.cpp's llama architecture and loads as llama (transformers 5.23 would take it for mistral
# only if general.name were exactly "mistral", and then fails: gguf-py has no such architecture). Without a
# sliding window the two compute the same.
LOADS_AS = {"mistral": "llama"}
VOCAB = 128
TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "\u2581", *"abcdefghijklmnopqrstuvwxyz"]
TOKENS += [f"<extra_{i}>" for i in range(VOCAB - len(TOKENS))]


def test_every_family_is_tried():
    assert set(ARCHITECTURES) == set(SUPPORTED_FAMILIES)


def _permute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of llama q/k rows: each head's two rotary halves interleaved (which the loader undoes)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, path, architecture: str, name: str, tokens: list[str] = TOKENS) -> None:
    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    rope = config.rope_parameters.get("full_attention", config.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
    if "sliding_attention" in config.rope_parameters:
        writer.add_rope_freq_base_swa(config.rope_parameters["sliding_attention"]["rope_theta"])
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    for cap in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, cap, None):
            getattr(writer, f"add_{cap}")(getattr(config, cap))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types([3 if token.startswith("<") else 1 for token in tokens])
    writer.add_pad_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(3)

    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == architecture),
                                     config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        assert gguf_name is not None, f"no GGUF name for {hf_name}"
        data = tensor.detach().float().numpy().copy()
        if architecture.startswith("gemma") and "norm" in stem:
            data = data + 1  # llama.cpp's gemma norms multiply by w, transformers' by 1 + w
        if architecture == "llama" and stem.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if stem.endswith("q_proj") else config.num_key_value_heads
            data = _permute_rotary_rows(data, heads)
        writer.add_tensor(f"{gguf_name}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_a_gguf_of_each_family_loads_with_its_models_logits(family, tmp_path, monkeypatch):
    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "cache"))
    source = tiny_model(family, seed=3, **SOURCE_OVERRIDES.get(family, {}))
    path = tmp_path / f"tiny-{family}.gguf"
    write_gguf(source, path, ARCHITECTURES[family], name=f"tiny {family}")

    loaded = load_model(str(path))
    model = loaded.model
    loads_as = LOADS_AS.get(family, family)
    assert loaded.source["kind"] == "gguf" and model.config.model_type == loads_as
    assert adapter_for(model.config).model_type == loads_as
    if loads_as == family:
        assert type(model) is type(source)
    if hasattr(source.config, "layer_types"):
        assert model.config.layer_types == source.config.layer_types
    ids = torch.randint(4, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))  # past the sliding windows
    with torch.no_grad():
        want, got = source(ids).logits, model(ids).logits
    assert (got - want).abs().max().item() <= 1e-5
    # The vocabulary came along as a tokenizer, and the dequantised copy is made once.
    assert loaded.tokenizer.convert_ids_to_tokens([1, 2, 7]) == ["<s>", "</s>", TOKENS[7]]
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1
    assert load_model(str(path)).checkpoint_dir == loaded.checkpoint_dir


# Each family's config keys that transformers' GGUF loader drops, set to values other than the config class's
# defaults: without `gguf_config_fixes` the loaded model would compute something else (or not load).
DROPPED = {
    "qwen3": {"head_dim": 8},
    "phi3": {"sliding_window": 6},
    "gemma2": {"attn_logit_softcapping": 40.0, "final_logit_softcapping": 20.0},
    "gemma3_text": {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 20_000.0}}},
}


@pytest.mark.parametrize("family", sorted(DROPPED))
def test_what_the_gguf_loader_drops_is_set_from_the_file(family, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    source = tiny_model(family, seed=3, **{**SOURCE_OVERRIDES.get(family, {}), **DROPPED[family]})
    path = tmp_path / f"tiny-{family}.gguf"
    write_gguf(source, path, ARCHITECTURES[family], name=f"tiny {family}")
    plain = AutoConfig.from_pretrained(tmp_path, gguf_file=path.name)
    fixed = gguf_config_fixes(path, AutoConfig.from_pretrained(tmp_path, gguf_file=path.name))
    for key in DROPPED[family]:
        assert getattr(plain, key) != getattr(source.config, key)  # what transformers alone makes of the file
        assert getattr(fixed, key) == getattr(source.config, key)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, config=fixed, dtype=torch.float32)
    ids = torch.randint(4, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - source(ids).logits).abs().max().item() <= 1e-5


def test_families_without_dropped_keys_keep_the_loaders_config(tmp_path):
    source = tiny_model("llama", seed=3)
    path = tmp_path / "tiny-llama.gguf"
    write_gguf(source, path, "llama", name="tiny llama")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path, gguf_file=path.name)
    before = config.to_dict()
    assert gguf_config_fixes(path, config) is config and config.to_dict() == before


@pytest.mark.parametrize("family", sorted(DROPPED))
def test_load_model_sets_what_the_gguf_loader_drops(family, tmp_path, monkeypatch):
    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "cache"))
    source = tiny_model(family, seed=3, **{**SOURCE_OVERRIDES.get(family, {}), **DROPPED[family]})
    path = tmp_path / f"tiny-{family}.gguf"
    write_gguf(source, path, ARCHITECTURES[family], name=f"tiny {family}")
    loaded = load_model(str(path))
    for key in DROPPED[family]:
        assert getattr(loaded.model.config, key) == getattr(source.config, key)
    ids = torch.randint(4, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (loaded.model(ids).logits - source(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_the_streamed_dequantiser_writes_what_transformers_loads_in_shards(family, tmp_path):
    """Tensor by tensor into shards of a few KiB: every weight equal to transformers' whole-model GGUF loader's."""
    import json

    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.models.gguf_stream import write_dequantised

    source = tiny_model(family, seed=3, **SOURCE_OVERRIDES.get(family, {}))
    path = tmp_path / f"tiny-{family}.gguf"
    write_gguf(source, path, ARCHITECTURES[family], name=f"tiny {family}")
    config = gguf_config_fixes(path, AutoConfig.from_pretrained(tmp_path, gguf_file=path.name))
    out = tmp_path / "out"
    out.mkdir()
    names = write_dequantised(path, config, out, shard_bytes=16 << 10)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, config=config,
                                                     dtype=torch.float32).state_dict()
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1 and set(index) == set(names)
    assert set(index) == set(reference) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    for name, file in index.items():
        with safe_open(out / file, "pt") as shard:
            assert torch.equal(shard.get_tensor(name), reference[name]), name
    assert config.architectures == [type(source).__name__] or family in LOADS_AS
