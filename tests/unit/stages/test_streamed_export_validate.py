"""Export and validate without two copies of the model (docs/scale.md, "What streams").

The export traces a fake model and writes each weight from the sliced checkpoint, one tensor at a time: its
graph must compute what a graph traced with the real weights in memory computes, and reading the weights must
happen once per written tensor (nothing materialised while optimizing). With SCULPT_STREAM_WEIGHTS=always (how
the tiny models take the big-model paths) export skips the ONNX Runtime check and says why, and validate scores
the streamed source layer by layer and the sculpted model one backend at a time."""

import json

import numpy as np
import onnx
import pytest
import torch

from exporters import onnx_weights
from exporters.onnx_export import (
    export_checkpoint,
    export_copy,
    export_model,
    trace_to_onnx,
)
from exporters.onnx_io import GraphIO
from pipeline.errors import SculptError
from pipeline.workflow import run_stage
from tests.factories import tiny_checkpoint
from tests.onnx_fixtures import heterogeneous_model
from tests.unit.cli.test_cli import CORPUS, sculpt
from validators.ort_runner import OrtRunner

IDS = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(3))


def in_memory_export(model, directory, dtype):
    """The oracle: torch's own exporter on the real weights in memory, with its optimizer folding them."""
    work = export_copy(model, dtype)
    io = GraphIO.from_config(work.config, str(dtype).removeprefix("torch."), 18)
    directory.mkdir()
    trace_to_onnx(work, io).save(str(directory / "model.onnx"), external_data=True)
    io.save(directory)
    return directory


@pytest.mark.parametrize(("precision", "dtype", "tolerance"), [("fp32", torch.float32, 1e-5),
                                                                ("fp16", torch.float16, 2e-3)])
def test_the_checkpoint_export_computes_what_the_in_memory_trace_computes(tmp_path, monkeypatch, precision, dtype,
                                                                           tolerance):
    model = heterogeneous_model()  # tied head, skipped and linear sublayers, per-layer KV heads
    model.save_pretrained(tmp_path / "ckpt")
    reads = []
    original = onnx_weights.CheckpointWeights.read
    monkeypatch.setattr(onnx_weights.CheckpointWeights, "read", lambda self, name: reads.append(name) or
                        original(self, name))
    sizes = {name: tensor.numel() for name, tensor in model.state_dict().items()}
    graph = export_checkpoint(tmp_path / "ckpt", tmp_path / "streamed", precision, external_data=True)
    oracle = in_memory_export(model, tmp_path / "oracle", dtype)

    streamed, expected = (OrtRunner.from_export_dir(d).logits(IDS) for d in (graph.directory, oracle))
    assert (streamed - expected).abs().max().item() <= tolerance * max(1.0, expected.abs().max().item())
    saved = onnx.load(str(graph.path), load_external_data=False).graph
    external = [t for t in saved.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    # every weight above the optimizer's size limits (1024 elements: it reads smaller constants to match its
    # rewrite patterns and to deduplicate them) is read once per tensor written (a tied head: as itself and
    # transposed), when it is written: the optimizer read none
    big = [name for name in reads if sizes.get(name, 0) >= 1024]
    assert big and len(big) == sum(1 for t in external if np.prod(t.dims) >= 1024)
    assert {onnx.TensorProto.DataType.Name(t.data_type) for t in external} == {"FLOAT" if precision == "fp32"
                                                                                else "FLOAT16"}
    from_module = export_model(model, tmp_path / "module", precision, external_data=True)
    assert torch.equal(OrtRunner.from_export_dir(from_module.directory).logits(IDS), streamed)


RECIPE = """preset: fast
model: {dtype: bfloat16}
search: {method: uniform, options: {split: proportional, mlp_multiple: 8}}
reform: {method: least-squares}
export: {precision: fp16, check_tokens: 8}
validate: {seq_len: 32, max_windows: 4, prefill_lengths: [16], decode_batch_sizes: [1], decode_new_tokens: 4,
           warmup: 0, repeats: 1, memory: false, cache_source: false, parity_new_tokens: 4}
"""


@pytest.fixture(scope="module")
def streamed_version(tmp_path_factory):
    """A bf16 qwen2 sculpted from a streamed source (the 7B recipe's shape of run), sliced shard by shard."""
    tmp_path = tmp_path_factory.mktemp("streamed")
    model = tiny_checkpoint(tmp_path / "model", "qwen2")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    corpus = str(tmp_path / "corpus.txt")
    result = sculpt("run", str(tmp_path / "recipe.yaml"), "--model", str(model), "--calib-corpus", corpus,
                    "--eval-corpus", corpus, "--calib-samples", "4", "--calib-seqlen", "32", "--ratio", "0.7",
                    "--stages", "search,reform,slice", "--out", str(tmp_path / "out"), "--quiet",
                    env={"SCULPT_STREAM_WEIGHTS": "always"})
    assert result.exit_code == 0, result.output
    return tmp_path / "out" / "v0001"


def _metrics(version, stage):
    manifest = json.loads((version / "manifest.json").read_text())
    return next(s for s in manifest["stages"] if s["name"] == stage)["metrics"]


def test_export_of_a_model_too_big_to_hold_twice_skips_onnx_runtime_and_says_why(streamed_version, monkeypatch):
    monkeypatch.setenv("SCULPT_STREAM_WEIGHTS", "always")
    run_stage(streamed_version, "export", progress=False)
    parity = json.loads((streamed_version / "export" / "parity.json").read_text())
    assert "too big to hold twice" in parity["skipped"] and parity["checker"] == "passed"
    assert _metrics(streamed_version, "export")["parity"] == parity
    onnx.checker.check_model(str(streamed_version / "export" / "model.onnx"))

    monkeypatch.setenv("SCULPT_STREAM_WEIGHTS", "never")
    run_stage(streamed_version, "export", force=True, progress=False)
    assert _metrics(streamed_version, "export")["parity"]["passed"] is True


def test_export_of_the_streamed_dense_source_is_still_one_line(streamed_version, monkeypatch):
    monkeypatch.setenv("SCULPT_STREAM_WEIGHTS", "always")
    with pytest.raises(SculptError, match="exports the whole dense source .*SCULPT_STREAM_WEIGHTS=never"):
        run_stage(streamed_version, "export", {"export.include_source": True}, force=True, progress=False)


def test_validate_on_a_streamed_source_measures_one_model_at_a_time(streamed_version, monkeypatch):
    monkeypatch.setenv("SCULPT_STREAM_WEIGHTS", "never")
    run_stage(streamed_version, "export", force=True, progress=False)  # an ONNX graph for onnxruntime
    reports = {}
    for mode, memory in (("never", False), ("always", True)):
        monkeypatch.setenv("SCULPT_STREAM_WEIGHTS", mode)
        run_stage(streamed_version, "validate", {"validate.memory": memory}, force=True, progress=False)
        reports[mode] = json.loads((streamed_version / "validate" / "report.json").read_text())
    whole, streamed = reports["never"], reports["always"]
    torch_ppl = [r["sculpted"]["by_backend"]["torch"]["perplexity"]["ppl"] for r in (whole, streamed)]
    assert torch_ppl[0] == torch_ppl[1]  # the same checkpoint, loaded the same way
    source_ppl = [r["source"]["by_backend"]["torch"]["perplexity"]["ppl"] for r in (whole, streamed)]
    assert source_ppl[1] == pytest.approx(source_ppl[0], rel=1e-3)  # bf16, summed layer by layer
    assert streamed["source"]["params"] == whole["source"]["params"]
    assert streamed["backends"]["onnxruntime"].startswith("not available: the sliced model is too big")
    assert "timings" in streamed["skipped"] and streamed["speed"] is None
    assert whole["backends"]["onnxruntime"] == "measured" and whole["skipped"] is None
    assert streamed["sculpted"]["by_backend"]["torch"]["memory"]["model_bytes"] > 0  # probed once it was closed
    assert "source memory" in streamed["skipped"]
