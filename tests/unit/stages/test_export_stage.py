"""`sculpt run --export-precision int4` on a trained tiny model: the quantized artifact end to end.

The export stage checks the fp32 graph against PyTorch, then quantizes it (manifest, quantization.json,
io.json say how); the build stage refuses it for TensorRT (skipped in a run, an error by name); validate
judges the int4 ONNX Runtime backend by its perplexity increase over the unquantized sculpted model and
its greedy agreement with it: the defaults pass, a tightened gate fails with exit status 3.
"""

import json

import pytest
import yaml
from click.testing import CliRunner

from pipeline.artifacts import read_manifest
from pipeline.cli import cli
from tests.threads import one_thread  # noqa: F401  (autouse)
from tests.trained import CORPUS, trained_checkpoint

GATE_EXIT = 3


def sculpt(tmp_path, *args):
    env = {"SCULPT_DATA_DIR": None, "SCULPT_CACHE_DIR": str(tmp_path / "cache")}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def int4_run(tmp_path_factory):
    """One `sculpt run` of a trained tiny model exported as int4 (block 64: coarse, so int4 measurably hurts it); (tmp dir, result, version dir)."""
    root = tmp_path_factory.mktemp("int4")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    recipe = {
        "preset": "fast", "model": {"source": str(trained_checkpoint(root / "model"))},
        "data": {"calibration": str(corpus), "evaluation": str(corpus), "calib_samples": 4, "calib_seqlen": 32},
        "search": {"ratio": 0.9},
        "export": {"precision": "int4", "quantization": {"block_size": 64}},
        "validate": {"seq_len": 64, "max_windows": 2, "prefill_lengths": [16], "decode_batch_sizes": [1],
                     "decode_prompt_len": 8, "decode_new_tokens": 4, "warmup": 0, "repeats": 1, "memory": False,
                     "parity_new_tokens": 8},
        "output": str(root / "artifacts"),
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = sculpt(root, "run", str(root / "recipe.yaml"), "--quiet")
    return root, result, root / "artifacts" / "v0001"


def test_the_export_records_the_quantization_and_keeps_the_checked_fp32_parity(int4_run):
    _, result, version = int4_run
    assert result.exit_code == 0, result.output
    export = read_manifest(version).record("export").metrics
    quantization = export["quantization"]
    assert export["precision"] == "int4" and export["parity"]["passed"] is True  # the fp32 graph, before quantizing
    assert {key: quantization[key] for key in ("bits", "block_size", "algorithm", "lm_head")} == {
        "bits": 4, "block_size": 64, "algorithm": "default", "lm_head": "int8"}
    assert quantization["matmuls_quantized"] > 0 and quantization["matmuls_kept_fp32"] == []
    assert export["onnx_bytes"] == quantization["onnx_bytes_after"] < quantization["onnx_bytes_before"]
    assert json.loads((version / "export" / "io.json").read_text())["quantized"] == "int4"
    assert json.loads((version / "export" / "quantization.json").read_text())["vs_torch"]["greedy_tokens"] > 0


def test_the_build_refuses_an_int4_export_for_tensorrt(int4_run):
    root, _, version = int4_run
    build = read_manifest(version).record("build")
    assert build.status == "skipped" and "MatMulNBits" in build.reason and not (version / "kit").exists()
    result = sculpt(root, "build", str(version))
    assert result.exit_code == 1
    assert "TensorRT cannot build the int4 export" in result.output and "--export-precision fp16" in result.output


def test_int4_passes_the_quantized_gates_and_fails_them_tightened(int4_run):
    root, _, version = int4_run
    report = json.loads((version / "validate" / "report.json").read_text())
    gates = {g["gate"]: g for g in report["gates"]}
    assert report["passed"] is True and set(gates) == {"quantized_max_ppl_increase", "quantized_min_greedy_agreement"}
    assert report["sculpted"]["by_backend"]["onnxruntime"]["quantized"] == "int4"
    increase, agreement = gates["quantized_max_ppl_increase"]["value"], gates["quantized_min_greedy_agreement"]["value"]
    assert increase > 0 and agreement < 1  # int4 measurably moves this model: a tighter gate can fail it
    assert "onnxruntime (int4)" in (version / "validate" / "report.md").read_text()

    tightened = sculpt(root, "validate", str(version), "--quantized-max-ppl-increase", f"{increase / 2:.6f}",
                       "--quantized-min-agreement", f"{min(1.0, agreement + 0.01):.4f}")
    assert tightened.exit_code == GATE_EXIT, tightened.output
    assert "FAIL quantized_max_ppl_increase[onnxruntime] failed" in tightened.output
    assert "FAIL quantized_min_greedy_agreement[onnxruntime] failed" in tightened.output
