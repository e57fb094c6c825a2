"""`sculpt run` on a source streamed from disk gives the same sliced model as the in-memory run.

SCULPT_STREAM_WEIGHTS=always makes the tiny checkpoint load as a skeleton whose layers are read one at a
time (pipeline/models/lazy_weights.py): search (uniform, proportional split), reform and slice then take their
streaming paths, and the sliced checkpoint is written shard by shard. Every tensor must equal the in-memory
run's, and so must the perplexity."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import pipeline  # noqa: F401  (registers the sculpted model with the Auto classes)
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from tests.factories import tiny_checkpoint
from tests.unit.cli.test_cli import CORPUS, sculpt

RECIPE = """preset: fast
model: {{dtype: {dtype}}}
search: {{method: uniform, options: {{split: proportional, mlp_multiple: 8}}}}
reform: {{method: {reform}, iterations: 6, sequential: {sequential}}}
"""


def _run(tmp_path, model, name: str, mode: str, reform: str, sequential: bool, dtype: str = "float32"):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(reform=reform, sequential=str(sequential).lower(), dtype=dtype))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / name
    result = sculpt("run", str(recipe), "--model", str(model), "--calib-corpus", str(corpus), "--eval-corpus",
                    str(corpus), "--calib-samples", "4", "--calib-seqlen", "32", "--ratio", "0.7",
                    "--stages", "search,reform,slice", "--out", str(out), "--quiet",
                    env={"SCULPT_STREAM_WEIGHTS": mode})
    assert result.exit_code == 0, result.output
    return out / "v0001"


def _tensors(model_dir):
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize(("family", "reform", "sequential", "dtype"), [
    ("qwen2", "least-squares", True, "bfloat16"),  # the 7B recipe: q/k/v biases, untied head, bf16 weights
    ("llama", "admm", True, "float32"),  # tied embeddings
    ("qwen2", "least-squares", False, "float32"),  # reform on the dense model's activations
])
def test_streamed_run_gives_the_in_memory_run_sliced_weights_and_perplexity(tmp_path, family, reform, sequential,
                                                                             dtype):
    model = tiny_checkpoint(tmp_path / "model", family, tie_word_embeddings=family == "llama")
    memory = _run(tmp_path, model, "memory", "never", reform, sequential, dtype)
    streamed = _run(tmp_path, model, "streamed", "always", reform, sequential, dtype)

    reports = [json.loads((v / "reform" / "report.json").read_text())["projections"] for v in (memory, streamed)]
    assert [{k: v for k, v in r.items() if not k.endswith("_s")} for r in reports[0]] == \
        [{k: v for k, v in r.items() if not k.endswith("_s")} for r in reports[1]]
    assert (memory / "search" / "arch.json").read_text() == (streamed / "search" / "arch.json").read_text()

    in_memory, sharded = _tensors(memory / "slice" / "model"), _tensors(streamed / "slice" / "model")
    assert len(list((streamed / "slice" / "model").glob("model-*.safetensors"))) == 2 + 4  # embed, head, layers
    assert in_memory.keys() == sharded.keys()
    for name, tensor in in_memory.items():
        assert torch.equal(tensor, sharded[name]), name
    for file in ("config.json", "generation_config.json", "modeling_sculpted.py", "tokenizer.json"):
        assert (memory / "slice" / "model" / file).read_bytes() == (streamed / "slice" / "model" / file).read_bytes()

    windows = torch.randint(3, 100, (3, 24), generator=torch.Generator().manual_seed(1))
    reloaded = [AutoModelForCausalLM.from_pretrained(v / "slice" / "model").eval() for v in (memory, streamed)]
    assert calibration_perplexity(reloaded[0], windows) == calibration_perplexity(reloaded[1], windows)
    manifest = json.loads((streamed / "manifest.json").read_text())
    slice_metrics = next(s for s in manifest["stages"] if s["name"] == "slice")["metrics"]
    assert slice_metrics["total_params"] == sum(p.numel() for p in reloaded[1].parameters())
    assert sculpt("verify", str(streamed)).exit_code == 0


def test_a_streamed_source_with_the_calibrated_split_stops_with_the_fix(tmp_path):
    model = tiny_checkpoint(tmp_path / "model", "qwen2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: fast\nsearch: {method: uniform, options: {split: calibrated}}\n")
    result = sculpt("run", str(recipe), "--model", str(model), "--calib-corpus", str(corpus), "--calib-samples", "2",
                    "--calib-seqlen", "16", "--stages", "search", "--out", str(tmp_path / "a"), "--quiet",
                    env={"SCULPT_STREAM_WEIGHTS": "always"})
    assert result.exit_code != 0
    assert "split: proportional" in result.output and "SCULPT_STREAM_WEIGHTS=never" in result.output
