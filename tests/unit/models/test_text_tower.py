"""The text tower of a multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration), taken as a gemma3_text model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import SculptError
from pipeline.models.adapters import adapter_for
from pipeline.models.families import TEXT_TOWERS, family_of
from pipeline.models.text_tower import text_tower_checkpoint, text_tower_of
from tests.factories import SLIDING_WINDOW, char_tokenizer, tiny_checkpoint

TEXT = {"vocab_size": 128, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 6,
            "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256, "sliding_window": SLIDING_WINDOW,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28,
              "patch_size": 14}


def multimodal_gemma3(seed: int = 0, tie: bool = True):
    """A tiny random Gemma3ForConditionalGeneration (norms random too, so a misplaced norm shows)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    config = Gemma3Config(text_config=dict(TEXT), vision_config=dict(VISION), mm_tokens_per_image=4,
                          boi_token_index=125, eoi_token_index=126, image_token_index=127, tie_word_embeddings=tie)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def save(model, directory, **kwargs):
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, **kwargs)
    char_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    model = multimodal_gemma3()
    return model, save(model, tmp_path_factory.mktemp("gemma3-mm") / "gemma-3-tiny-it")


IDS = torch.randint(3, 120, (2, 3 * SLIDING_WINDOW), generator=torch.Generator().manual_seed(1))  # past the window


def tower_logits(directory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
    with torch.no_grad():
        return model(IDS).logits


def wrapper_logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_the_text_tower_gives_the_multimodal_models_text_logits(multimodal, tmp_path):
    model, source = multimodal
    tower = text_tower_checkpoint(source, cache=tmp_path)
    assert tower.parent == tmp_path and tower.name.startswith("gemma-3-tiny-it-")
    assert (tower / "model.safetensors").is_file() and (tower / "tokenizer.json").is_file()
    config = json.loads((tower / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["layer_types"] == TEXT["layer_types"]
    assert config["rope_parameters"]["sliding_attention"] != config["rope_parameters"]["full_attention"]
    # No vision weights came along, and nothing is left to random initialisation (the logits say so).
    assert not any("vision" in name or "projector" in name for name in load_file(tower / "model.safetensors"))
    assert torch.allclose(tower_logits(tower), wrapper_logits(model), atol=1e-5, rtol=0)


def test_the_tower_loads_through_load_model_as_a_supported_family(multimodal, tmp_path):
    from pipeline.models.loading import load_model

    loaded = load_model(str(text_tower_checkpoint(multimodal[1], cache=tmp_path)))
    assert adapter_for(loaded.model.config).model_type == "gemma3_text"
    assert loaded.tokenizer("hello")["input_ids"]


def test_load_model_takes_a_multimodal_directory_as_its_text_tower(multimodal, tmp_path, monkeypatch):
    from pipeline.models.loading import load_model

    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "cache"))
    model, source = multimodal
    loaded = load_model(str(source))  # the multimodal checkpoint itself, as `--model DIR` gives it
    assert loaded.model.config.model_type == "gemma3_text"
    with torch.no_grad():
        assert torch.allclose(loaded.model(IDS).logits, wrapper_logits(model), atol=1e-5, rtol=0)


def test_the_tower_is_made_once_and_again_when_the_source_changes(multimodal, tmp_path):
    source = multimodal[1]
    first = text_tower_checkpoint(source, cache=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert text_tower_checkpoint(source, cache=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = save(multimodal_gemma3(seed=3), tmp_path / "src" / source.name)
    assert text_tower_checkpoint(other, cache=tmp_path) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, text_tower_checkpoint(other, tmp_path).name,
                                                                 "src"])


def test_a_sharded_checkpoint_with_the_newer_weight_names_gives_the_same_tower(multimodal, tmp_path):
    """transformers 4.52-4.57 saved the language model as model.language_model.* ; shards come with an index."""
    model, _ = multimodal
    source = save(model, tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    for shard in shards:
        tensors = load_file(source / shard)
        save_file({name.replace("language_model.model.", "model.language_model.", 1): t for name, t in tensors.items()},
                  source / shard, metadata={"format": "pt"})
    tower = text_tower_checkpoint(source, cache=tmp_path / "cache")
    assert (tower / "model.safetensors.index.json").is_file()
    assert torch.allclose(tower_logits(tower), wrapper_logits(model), atol=1e-5, rtol=0)


def test_an_untied_lm_head_comes_along(tmp_path):
    model = multimodal_gemma3(seed=1, tie=False)
    with torch.no_grad():
        model.lm_head.weight.normal_()
    tower = text_tower_checkpoint(save(model, tmp_path / "untied"), cache=tmp_path / "cache")
    assert json.loads((tower / "config.json").read_text())["tie_word_embeddings"] is False
    assert "lm_head.weight" in load_file(tower / "model.safetensors")
    assert torch.allclose(tower_logits(tower), wrapper_logits(model), atol=1e-5, rtol=0)


def test_a_checkpoint_missing_tower_weights_is_an_error_not_random_layers(multimodal, tmp_path):
    source = save(multimodal[0], tmp_path / "broken")
    tensors = load_file(source / "model.safetensors")
    del tensors["language_model.model.layers.2.mlp.down_proj.weight"]
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SculptError, match=r"lacks 1 weights of its gemma3_text text tower \(e\.g\. "
                                          r"model\.layers\.2\.mlp\.down_proj\.weight\)"):
        text_tower_checkpoint(source, cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written is left to be reused


def test_bin_only_checkpoints_are_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SculptError, match="safetensors checkpoints only"):
        text_tower_checkpoint(tmp_path, cache=tmp_path / "cache")


def test_a_text_only_checkpoint_is_taken_as_it_is(tmp_path):
    source = tiny_checkpoint(tmp_path / "llama")
    assert text_tower_of(source) is None
    assert text_tower_checkpoint(source, cache=tmp_path / "cache") == source
    assert not (tmp_path / "cache").exists()


def test_the_errors_name_the_text_towers():
    class Config:
        model_type = "gemma3"

    with pytest.raises(SculptError, match="'gemma3' is multimodal: llm-sculpt prunes its text tower, a gemma3_text"):
        adapter_for(Config())
    Config.model_type = "llava"
    with pytest.raises(SculptError, match=r"supports llama, .*gemma3_text, the text tower of gemma3 \(as gemma3_text\)"):
        adapter_for(Config())
    with pytest.raises(ValueError, match="the text tower of gemma3"):
        family_of("llava")
    assert TEXT_TOWERS["gemma3"].family == "gemma3_text"


def test_a_hub_style_config_with_legacy_rope_keys_gives_the_same_tower(tmp_path):
    """Hub checkpoints of Gemma 3 4B+ (saved by transformers 4.50) state RoPE as rope_theta, rope_local_base_freq
    and a linear rope_scaling of the global layers: the tower must keep what transformers reads from them."""
    from transformers import Gemma3ForConditionalGeneration

    source = save(multimodal_gemma3(seed=2), tmp_path / "hub-style")
    config = json.loads((source / "config.json").read_text())
    text = config["text_config"]
    del text["rope_parameters"]
    text.update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling={"factor": 8.0, "rope_type": "linear"})
    (source / "config.json").write_text(json.dumps(config))
    model = Gemma3ForConditionalGeneration.from_pretrained(source).eval()  # as transformers reads the hub file
    assert model.config.text_config.rope_parameters["full_attention"]["rope_type"] == "linear"
    tower = text_tower_checkpoint(source, cache=tmp_path / "cache")
    rope = json.loads((tower / "config.json").read_text())["rope_parameters"]
    assert rope["full_attention"]["factor"] == 8.0 and rope["sliding_attention"]["rope_theta"] == 10_000.0
    assert torch.allclose(tower_logits(tower), wrapper_logits(model), atol=1e-5, rtol=0)
