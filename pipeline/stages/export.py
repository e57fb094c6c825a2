"""export: the sliced model as ONNX with a KV cache, checked against PyTorch and linted for TensorRT.

Writes `export/model.onnx` (+ `model.onnx.data` above 2 GB), `export/io.json` (names, KV
heads per cache entry), `export/parity.json` and `export/lint.json`; with
`export.include_source`, the same for the dense source model in `export/source/`.

The sliced checkpoint is exported without being loaded (exporters.onnx_export.export_checkpoint: a fake trace,
then the weights read, cast and written one tensor at a time), and never held twice: the parity check first
runs the PyTorch model (loaded in the graph's dtype) on its prompts, keeps only the answers, drops the model,
and then opens the graph in ONNX Runtime. ONNX Runtime on a CPU holds about twice an fp16 graph's weights
(they are widened to fp32), so for a sliced model too big to load whole (the rule that streams a source,
`lazy_weights.stream_source`: more than a quarter of memory, or SCULPT_STREAM_WEIGHTS=always) the check is
skipped and parity.json and the manifest say so and why; `onnx.checker` still checks the graph and its
external data.

`export.precision` int4 / int8: the fp32 graph is exported and checked against PyTorch as usual
(parity.json), then its MatMul weights are quantized by ONNX Runtime's quantizer
(exporters/quantize.py) in place; `quantization.json` and the manifest record how, and how far the
quantized graph's logits and greedy tokens are from PyTorch's. That distance is not a pass/fail
here: the validate stage judges a quantized graph by perplexity and greedy agreement
(`validate.quantized`).

The composition lives here, not in `exporters`: the exporters export, check parity against
any runner and lint; the ONNX Runtime runner that checks the export is a validator.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch import nn

from exporters.onnx_export import (
    PRECISIONS,
    as_sculpted,
    export_checkpoint,
    export_copy,
    export_model,
)
from exporters.parity import ParityReference, compare_parity, parity_reference
from exporters.quantize import QUANTIZED_PRECISIONS, WeightQuantization, quantize_graph
from exporters.trt_lint import lint
from validators.ort_runner import OrtRunner

from ..errors import SculptError
from ..targets import TRT_TARGETS
from .context import StageContext, whole_model_problem

NAME = "export"


def options(ctx: StageContext) -> dict:
    section = ctx.recipe.export
    exclude = None if section.precision in QUANTIZED_PRECISIONS else {"quantization"}  # unused by fp32 / fp16
    return {**section.model_dump(mode="json", exclude=exclude), "model": ctx.model_options()}


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("slice")
    return ["slice/model"]


def run(ctx: StageContext) -> None:
    section = ctx.recipe.export
    quantization = (WeightQuantization.from_section(section.precision, section.quantization)
                    if section.precision in QUANTIZED_PRECISIONS else None)
    settings = {"precision": section.precision, "opset": section.opset, "external_data": section.external_data,
                    "check_tokens": section.check_tokens, "say": ctx.say, "quantization": quantization,
                    "device": ctx.recipe.model.device}
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=inputs(ctx)) as st:
        st.metrics.update(export_checked(ctx.artifact.path / "slice" / "model", st.dir, **settings))
        if section.include_source:
            ctx.say("  and the dense source model")
            source = ctx.whole_source(NAME, "exports the whole dense source (export.include_source)").model
            st.metrics["source"] = export_checked(source, st.dir / "source", **settings)


def export_checked(model: nn.Module | Path, directory: Path, precision: str = "fp32", opset: int = 18,
                   external_data: bool | None = None, check_tokens: int = 32,
                   say: Callable[[str], None] = print, quantization: WeightQuantization | None = None,
                   device: str = "cpu") -> dict:
    """Export `model` (a sculpted checkpoint directory, or a model in memory, sculpted or dense) into
    `directory`, verify it, and return the metrics.

    Writes, into one directory: model.onnx (+ model.onnx.data), io.json, parity.json, lint.json, and for
    precision int4 / int8 (`quantization` then says how) quantization.json. Raises SculptError when the parity
    of the fp32 / fp16 graph fails. A checkpoint too big to hold whole (`whole_model_problem`) is exported and
    checked by onnx.checker, but not run: parity.json records the check as skipped, with the reason.
    """
    if (precision in QUANTIZED_PRECISIONS) != (quantization is not None):
        raise ValueError(f"precision {precision} with quantization {quantization}: give both or neither")
    graph_precision = "fp32" if quantization is not None else precision
    dtype = PRECISIONS[graph_precision]
    if isinstance(model, nn.Module):
        sculpted = as_sculpted(model)
        say(f"  exporting {graph_precision} ONNX (opset {opset}) to {directory}")
        graph = export_model(sculpted, directory, graph_precision, opset, external_data)
        skipped = None

        def load_reference() -> nn.Module:
            return export_copy(sculpted, dtype)
    else:
        checkpoint = Path(model)
        say(f"  exporting {graph_precision} ONNX (opset {opset}) to {directory}, the weights read from {checkpoint} "
            "one tensor at a time")
        graph = export_checkpoint(checkpoint, directory, graph_precision, opset, external_data)
        skipped = whole_model_problem(checkpoint, str(dtype).removeprefix("torch."))

        def load_reference() -> nn.Module:
            from transformers import AutoModelForCausalLM

            import pipeline  # noqa: F401  (registers the sculpted model)

            loaded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, low_cpu_mem_usage=True)
            loaded.set_attn_implementation("sdpa")
            return loaded.to(device).eval()
    if skipped is not None and quantization is not None:
        raise SculptError(f"export.precision {precision} quantizes a graph checked against PyTorch, and {skipped}: "
                          "export fp16 (TensorRT's input) or run the export on a machine with more memory")
    if skipped is None:
        say(f"  checking it against PyTorch ({check_tokens} greedy tokens through the KV cache; PyTorch first, "
            "then ONNX Runtime, never both models at once)")
        reference = reference_answers(load_reference, check_tokens)
        parity = compare_parity(reference, OrtRunner.from_export_dir(directory), graph_precision)
        gc.collect()  # the ONNX Runtime session goes before anything else is loaded
        parity_record = parity.as_dict()
    else:
        say(f"  not run in ONNX Runtime: {skipped}; onnx.checker checked the graph and its external data")
        parity, parity_record = None, {"precision": graph_precision, "skipped": skipped, "checker": "passed"}
    (directory / "parity.json").write_text(json.dumps(parity_record, indent=1) + "\n")
    if parity is not None:
        parity.require()
    quantized = None
    if quantization is not None:
        quantized = quantize_checked(reference, directory, quantization, graph.io, external_data, check_tokens, say)
    reports = {target: lint(graph.path, target) for target in TRT_TARGETS}
    (directory / "lint.json").write_text(json.dumps({t: r.as_dict() for t, r in reports.items()}, indent=1) + "\n")
    onnx_bytes = quantized["onnx_bytes_after"] if quantized else graph.bytes
    external = (directory / "model.onnx.data").is_file()
    return {"precision": precision, "opset": opset, "onnx_bytes": onnx_bytes, "external_data": external,
            "export_s": round(graph.seconds, 1), "fp32_pinned_ops": graph.fp32_pinned,
            "cache_entries": graph.io.num_cache_entries, "kv_heads": list(graph.io.kv_heads),
            "parity": parity_record, "trt_lint_ok": {t: r.ok for t, r in reports.items()},
            **({"quantization": quantized} if quantized else {})}


def reference_answers(load: Callable[[], nn.Module], check_tokens: int) -> ParityReference:
    """The PyTorch model's parity answers; the model is loaded for them and dropped before this returns."""
    model = load()
    try:
        return parity_reference(model, greedy_tokens=check_tokens)
    finally:
        del model
        gc.collect()


def quantize_checked(reference: nn.Module | ParityReference, directory: Path, spec: WeightQuantization, io,
                     external_data: bool | None, check_tokens: int, say: Callable[[str], None]) -> dict:
    """Quantize the checked fp32 graph in `directory` in place, mark io.json, and measure how far the quantized
    graph is from PyTorch (`reference`: the fp32 model, or its parity answers; recorded, not judged: validate's
    quantized gates judge it)."""
    say(f"  quantizing the weights to {spec.label} (block {spec.block_size}, {spec.algorithm}, onnxruntime "
        f"MatMulNBits, accuracy level {spec.accuracy_level})")
    quantized = quantize_graph(directory, spec, external_data).as_dict()
    replace(io, quantized=spec.label).save(directory)
    if isinstance(reference, nn.Module):
        reference = parity_reference(reference, greedy_tokens=check_tokens)
    distance = compare_parity(reference, OrtRunner.from_export_dir(directory), "fp32")
    kept = ("max_abs_logits", "max_abs_logits_decode", "logit_scale", "greedy_match", "greedy_tokens")
    quantized["vs_torch"] = {key: getattr(distance, key) for key in kept}
    (directory / "quantization.json").write_text(json.dumps(quantized, indent=1) + "\n")
    say(f"  {quantized['matmuls_quantized']} MatMuls quantized, {len(quantized['matmuls_kept_fp32'])} kept in "
        f"fp32; ONNX {quantized['onnx_bytes_before'] / 2**20:.1f} -> "
        f"{quantized['onnx_bytes_after'] / 2**20:.1f} MiB; greedy tokens equal to PyTorch's: "
        f"{distance.greedy_match}/{distance.greedy_tokens}")
    return quantized
