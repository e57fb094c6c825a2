"""`sculpt run --method goa|magnitude|wanda-sp|flap` on a tiny checkpoint: an artifact whose sliced model
reloads, has the searched (GQA-legal) shape and generates."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import pipeline  # noqa: F401  (registers the sculpted model with the Auto classes)
from pipeline.cli import cli
from pipeline.models.spec import ArchSpec
from tests.factories import light_validate_recipe, tiny_checkpoint
from tests.unit.cli.test_cli import CORPUS


@pytest.mark.parametrize("method", ["goa", "magnitude", "wanda-sp", "flap"])
def test_cli_run_with_a_width_method_gives_a_model_that_reloads_and_generates(method, tmp_path):
    model_dir = tiny_checkpoint(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    args = ["run", str(light_validate_recipe(tmp_path)), "--method", method, "--model", str(model_dir),
            "--calib-corpus", str(corpus),
            "--eval-corpus", str(corpus), "--calib-samples", "4", "--calib-seqlen", "32", "--seq-len", "32",
            "--max-windows", "1", "--ratio", "0.7", "--out", str(tmp_path / "artifacts"), "--quiet"]
    result = CliRunner().invoke(cli, args, env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    version = tmp_path / "artifacts" / "v0001"
    spec = ArchSpec.from_json((version / "search" / "arch.json").read_text()).validate()
    assert spec.notes["method"] == method
    assert any(layer.num_heads < 6 or layer.intermediate_size < 64 for layer in spec.layers)
    validate = json.loads((version / "manifest.json").read_text())["stages"][-1]
    assert validate["name"] == "validate" and validate["metrics"]["params"] < validate["metrics"]["params_source"]

    sliced = AutoModelForCausalLM.from_pretrained(version / "slice" / "model").eval()
    for position, layer in enumerate(spec.layers):
        attention = sliced.model.layers[position].self_attn
        if layer.has_attention:  # whole KV groups, the same query heads per group
            assert attention.k_proj.out_features == layer.num_kv_heads * 8
            assert attention.q_proj.out_features == layer.num_heads * 8
            assert layer.num_heads % layer.num_kv_heads == 0
    ids = torch.tensor([[5, 17, 33, 40]])
    generated = sliced.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert generated.shape == (1, 10)
