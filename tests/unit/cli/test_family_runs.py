"""`sculpt run` end to end on the families beyond Llama: Gemma 3 (sliding/full layers, four norms) and Phi-3
(fused projections); an unsupported family is one line naming the supported ones."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from pipeline.cli import cli
from pipeline.models.families import SUPPORTED_FAMILIES
from tests.factories import light_validate_recipe, tiny_checkpoint

CORPUS = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(400))


def sculpt(*args):
    return CliRunner().invoke(cli, list(args), env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)


@pytest.mark.parametrize("family", ["gemma3_text", "phi3"])
def test_run_at_0_8_sculpts_exports_and_reloads(family, tmp_path):
    # MLP widths go in steps of 64 channels: a 512-wide MLP leaves room to meet 0.8 from below
    model = tiny_checkpoint(tmp_path / "model", family, hidden_size=96, intermediate_size=512)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    result = sculpt("run", str(light_validate_recipe(tmp_path)), "--model", str(model), "--ratio", "0.8",
                    "--calib-corpus", str(corpus), "--eval-corpus", str(corpus), "--calib-samples", "4",
                    "--calib-seqlen", "32", "--seq-len", "64", "--max-windows", "2",
                    "--out", str(tmp_path / "artifacts"), "--quiet")
    assert result.exit_code == 0, result.output
    version = tmp_path / "artifacts" / "v0001"
    manifest = json.loads((version / "manifest.json").read_text())
    stages = {stage["name"]: stage for stage in manifest["stages"]}
    assert stages["export"]["metrics"]["parity"]["passed"]  # 64-token windows: past the tiny window of 6
    assert stages["validate"]["metrics"]["params"] < stages["validate"]["metrics"]["params_source"]
    sculpted = AutoModelForCausalLM.from_pretrained(version / "slice" / "model")
    config = json.loads((version / "slice" / "model" / "config.json").read_text())
    assert config["base_model_type"] == family
    names = {name for name, _ in sculpted.named_parameters()}
    if family == "phi3":  # the fused layout survives slicing
        assert any(name.endswith("self_attn.qkv_proj.weight") for name in names)
        assert any(name.endswith("mlp.gate_up_proj.weight") for name in names)
    else:  # sliding layers stay sliding, and the four norms per layer are there
        assert "sliding_attention" in config["layer_types"] and "full_attention" in config["layer_types"]
        assert any(name.endswith("post_feedforward_layernorm.weight") for name in names)
    with torch.no_grad():
        assert torch.isfinite(sculpted(torch.tensor([[5, 6, 7, 8]])).logits).all()


def test_an_unsupported_family_is_one_line_naming_the_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    result = sculpt("run", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "a"), "--quiet",
                    "--calib-corpus", "pydoc", "--eval-corpus", "pydoc")
    error = result.output.strip().splitlines()[-1]  # the lines before it say which stage was running
    assert result.exit_code == 1 and error.startswith("error: ") and "Traceback" not in result.output
    assert "'gpt2' is not supported" in error and all(family in error for family in SUPPORTED_FAMILIES)
