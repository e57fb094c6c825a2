"""export: the sliced model as ONNX with a KV cache, checked against PyTorch and linted for TensorRT.

Writes `export/model.onnx` (+ `model.onnx.data` above 2 GB), `export/io.json` (names, KV
heads per cache entry), `export/parity.json` and `export/lint.json`; with
`export.include_source`, the same for the dense source model in `export/source/`.

The composition lives here, not in `exporters`: the exporters export, check parity against
any runner and lint; the ONNX Runtime runner that checks the export is a validator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from exporters.onnx_export import PRECISIONS, as_sculpted, export_copy, export_model
from exporters.parity import check_parity
from exporters.trt_lint import lint
from validators.ort_runner import OrtRunner

from ..targets import TRT_TARGETS
from .context import StageContext

NAME = "export"


def options(ctx: StageContext) -> dict:
    return {**ctx.recipe.export.model_dump(mode="json"), "model": ctx.model_options()}


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("slice")
    return ["slice/model"]


def run(ctx: StageContext) -> None:
    section = ctx.recipe.export
    settings = dict(precision=section.precision, opset=section.opset, external_data=section.external_data,
                    check_tokens=section.check_tokens, say=ctx.say)
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=inputs(ctx)) as st:
        device = ctx.recipe.model.device
        model = AutoModelForCausalLM.from_pretrained(ctx.artifact.path / "slice" / "model", dtype=torch.float32)
        st.metrics.update(export_checked(model.to(device).eval(), st.dir, **settings))
        if section.include_source:
            ctx.say("  and the dense source model")
            st.metrics["source"] = export_checked(ctx.source().model, st.dir / "source", **settings)


def export_checked(model: nn.Module, directory: Path, precision: str = "fp32", opset: int = 18,
                   external_data: bool | None = None, check_tokens: int = 32,
                   say: Callable[[str], None] = print) -> dict:
    """Export `model` (sculpted or dense) into `directory`, verify it, and return the metrics.

    Writes, into one directory: model.onnx (+ model.onnx.data), io.json, parity.json, lint.json.
    Raises SculptError when parity fails.
    """
    sculpted = as_sculpted(model)
    say(f"  exporting {precision} ONNX (opset {opset}) to {directory}")
    graph = export_model(sculpted, directory, precision, opset, external_data)
    say(f"  checking it against PyTorch ({check_tokens} greedy tokens through the KV cache)")
    runner = OrtRunner.from_export_dir(directory)
    parity = check_parity(export_copy(sculpted, PRECISIONS[precision]), runner, precision,
                          greedy_tokens=check_tokens)
    (directory / "parity.json").write_text(json.dumps(parity.as_dict(), indent=1) + "\n")
    parity.require()
    reports = {target: lint(graph.path, target) for target in TRT_TARGETS}
    (directory / "lint.json").write_text(json.dumps({t: r.as_dict() for t, r in reports.items()}, indent=1) + "\n")
    return {"precision": precision, "opset": opset, "onnx_bytes": graph.bytes, "external_data": graph.external_data,
            "export_s": round(graph.seconds, 1), "fp32_pinned_ops": graph.fp32_pinned,
            "cache_entries": graph.io.num_cache_entries, "kv_heads": list(graph.io.kv_heads),
            "parity": parity.as_dict(), "trt_lint_ok": {t: r.ok for t, r in reports.items()}}
