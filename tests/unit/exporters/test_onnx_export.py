"""ONNX export with a KV cache: parity with PyTorch through ONNX Runtime, names, shapes, precision."""

import copy

import numpy as np
import onnx
import pytest
import torch

from exporters.fp16 import compute_dtypes
from exporters.onnx_export import as_sculpted, export_copy, export_model
from exporters.onnx_io import GraphIO
from exporters.parity import check_parity
from exporters.trt_lint import lint
from pipeline.errors import SculptError
from pipeline.measures.perplexity import perplexity
from pipeline.measures.runners import DecodingRunner, TorchRunner
from tests.factories import tiny_model
from tests.onnx_fixtures import exported_tiny, exported_tiny_fp16, sculpted_tiny, torch_greedy  # noqa: F401 (fixtures)
from validators.ort_runner import OrtRunner

IDS = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(3))


def test_fp32_logits_match_pytorch(sculpted_tiny, exported_tiny):
    runner = OrtRunner.from_export_dir(exported_tiny.directory)
    with torch.no_grad():
        expected = sculpted_tiny(IDS, use_cache=False).logits
    assert (runner.logits(IDS) - expected).abs().max().item() <= 1e-4


def test_32_greedy_tokens_through_the_kv_cache_match_pytorch(sculpted_tiny, exported_tiny):
    runner = OrtRunner.from_export_dir(exported_tiny.directory)
    prompt = IDS[:, :7]
    generated = runner.generate(prompt, 32)
    assert generated.shape == (2, 7 + 32)
    assert torch.equal(generated, torch_greedy(sculpted_tiny, prompt, 32))


def test_greedy_logits_follow_the_greedy_tokens_on_both_backends(sculpted_tiny, exported_tiny):
    """What the parity check compares: each step's logits, whose argmax is the next greedy token."""
    prompt = IDS[:, :7]
    for runner in (OrtRunner.from_export_dir(exported_tiny.directory), TorchRunner(sculpted_tiny)):
        assert isinstance(runner, DecodingRunner)
        steps = runner.greedy_logits(prompt, 6)
        assert steps.shape == (2, 6, sculpted_tiny.config.vocab_size) and steps.dtype == torch.float32
        assert torch.equal(steps.argmax(-1), torch_greedy(sculpted_tiny, prompt, 6)[:, 7:])


def test_the_parity_check_takes_any_decoding_runner(sculpted_tiny):
    """The exporters' check knows no backend: torch against itself agrees exactly."""
    report = check_parity(sculpted_tiny, TorchRunner(sculpted_tiny), "fp32", greedy_tokens=8)
    assert report.passed and report.greedy_match == 8 and report.max_abs_logits == report.max_abs_logits_decode == 0


def test_onnx_runtime_perplexity_is_within_a_tenth_of_a_percent_of_torch(sculpted_tiny, exported_tiny):
    ids = torch.randint(3, 128, (4 * 32,), generator=torch.Generator().manual_seed(5))
    ort_ppl = perplexity(OrtRunner.from_export_dir(exported_tiny.directory), ids, 32, progress=False).ppl
    torch_ppl = perplexity(TorchRunner(sculpted_tiny), ids, 32, progress=False).ppl
    assert abs(ort_ppl / torch_ppl - 1) < 1e-3


def test_each_attention_layer_has_its_own_kv_heads_and_skipped_ones_have_none(sculpted_tiny, exported_tiny):
    graph = onnx.load(str(exported_tiny.path), load_external_data=False).graph
    inputs = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.input}
    outputs = [v.name for v in graph.output]
    # kept layers 0, 2, 4 have attention (layer 1 skips it, layer 3 replaced it): 3 cache entries, KV heads 2, 1, 2
    assert exported_tiny.io.kv_heads == (2, 1, 2)
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert [inputs[f"past_key_values.{i}.key"][1] for i in range(3)] == [2, 1, 2]
    assert "past_key_values.3.key" not in inputs
    assert outputs == ["logits"] + [f"present.{i}.{kind}" for i in range(3) for kind in ("key", "value")]
    assert inputs["past_key_values.0.key"][0] == inputs["input_ids"][0]  # one dynamic batch dim
    assert isinstance(inputs["past_key_values.0.key"][2], str)  # dynamic past length
    assert GraphIO.load(exported_tiny.directory) == exported_tiny.io


def test_external_data_holds_the_weights(exported_tiny):
    assert exported_tiny.external_data and (exported_tiny.directory / "model.onnx.data").stat().st_size > 0
    graph = onnx.load(str(exported_tiny.path), load_external_data=False).graph
    external = [i for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert any(i.name.endswith("lm_head.weight") or "embed_tokens" in i.name for i in external)


def test_the_masked_dummy_slot_changes_no_logit(exported_tiny):
    """A prompt after one masked cache slot scores exactly as a prompt with an empty past (ONNX Runtime takes both)."""
    runner = OrtRunner.from_export_dir(exported_tiny.directory)
    io = exported_tiny.io
    ids = IDS.numpy()
    empty = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()}
    for name in io.past_inputs:
        empty[name] = np.zeros((2, io.cache_heads(name), 0, io.head_dim), dtype=np.float32)
    without_slot = runner.run(empty)["logits"]
    np.testing.assert_allclose(runner.logits(IDS).numpy(), without_slot, atol=1e-5, rtol=0)


def test_exported_graphs_pass_the_tensorrt_lint(exported_tiny, exported_tiny_fp16):
    for graph in (exported_tiny, exported_tiny_fp16):
        for target in ("trt-10.3", "trt-11"):
            report = lint(graph.path, target)
            assert report.ok, report.lines()


def test_fp16_export_keeps_norms_and_softmax_in_fp32_and_tracks_pytorch(sculpted_tiny, exported_tiny_fp16):
    graph = onnx.load(str(exported_tiny_fp16.path))
    found = compute_dtypes(graph)
    assert found["Softmax"] == {"float": 3} and set(found["ReduceMean"]) == {"float"}
    assert exported_tiny_fp16.fp32_pinned == 3
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    runner = OrtRunner.from_export_dir(exported_tiny_fp16.directory)
    report = check_parity(export_copy(sculpted_tiny, torch.float16), runner, "fp16")
    assert report.passed, report.as_dict()
    with torch.no_grad():
        fp32 = sculpted_tiny(IDS, use_cache=False).logits
    assert (runner.logits(IDS) - fp32).abs().max().item() < 2e-2 * max(1.0, fp32.abs().max().item())


def test_the_dense_source_exports_through_the_same_path(tmp_path):
    dense = tiny_model("qwen3", num_hidden_layers=2)  # q/k norms: another family's modules
    graph = export_model(dense, tmp_path, "fp32")
    assert graph.io.kv_heads == (2, 2) and not graph.external_data
    runner = OrtRunner.from_export_dir(tmp_path)
    with torch.no_grad():
        expected = dense(IDS, use_cache=False).logits
    assert (runner.logits(IDS) - expected).abs().max().item() <= 1e-4
    report = check_parity(export_copy(as_sculpted(dense), torch.float32), runner, "fp32")
    assert report.passed and report.greedy_match == 32


def test_parity_failure_is_reported_with_the_numbers(sculpted_tiny, exported_tiny):
    """A model that no longer matches its export (one weight changed) fails the exporter's self-check."""
    changed = copy.deepcopy(sculpted_tiny)
    with torch.no_grad():
        changed.lm_head.weight[5] += 1.0
    report = check_parity(changed, OrtRunner.from_export_dir(exported_tiny.directory), "fp32")
    assert not report.passed
    with pytest.raises(SculptError, match="disagrees with PyTorch"):
        report.require()


def test_ort_runner_latency_reports_timings(exported_tiny):
    runner = OrtRunner.from_export_dir(exported_tiny.directory)
    prefill = runner.prefill_latency(16, batch=2, warmup=1, repeats=3)
    assert prefill.repeats == 3 and 0 < prefill.p10_s <= prefill.median_s <= prefill.p90_s
    decode = runner.decode_throughput(batch=2, prompt_len=8, new_tokens=4, warmup=1, repeats=2)
    assert decode.tokens_per_s > 0 and decode.batch == 2 and decode.step.repeats == 2
    assert decode.tokens_per_s == pytest.approx(2 / decode.step.median_s)


def test_missing_export_dir_is_one_clear_error(tmp_path):
    with pytest.raises(SculptError, match="sculpt export"):
        OrtRunner.from_export_dir(tmp_path)


def test_io_binding_keeps_the_cache_as_ort_values_and_generates_the_same_tokens(sculpted_tiny, exported_tiny):
    """The GPU path (presents stay on the device, fed back as OrtValues), exercised on the CPU."""
    plain = OrtRunner.from_export_dir(exported_tiny.directory)
    bound = OrtRunner(plain.session, plain.io, io_binding=True)
    outputs, _ = bound.prefill(IDS[:, :5].numpy())
    assert isinstance(outputs["logits"], np.ndarray) and not isinstance(outputs["present.0.key"], np.ndarray)
    assert torch.equal(bound.generate(IDS[:, :5], 8), plain.generate(IDS[:, :5], 8))
    assert bound.prefill_latency(8, repeats=1).median_s > 0


def test_a_gpu_device_needs_the_cuda_provider():
    from validators.ort_runner import execution_providers

    assert execution_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert execution_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(SculptError, match="onnxruntime-gpu"):
        execution_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(SculptError, match="cpu or cuda"):
        execution_providers("mps", ["CPUExecutionProvider"])
