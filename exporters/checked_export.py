"""The exporter as the pipeline runs it: export, check against PyTorch, lint for every TensorRT target.

Writes, into one directory: model.onnx (+ model.onnx.data), io.json, parity.json, lint.json;
returns the metrics the export stage records. Raises SculptError when parity fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torch import nn

from pipeline.targets import TRT_TARGETS
from validators.ort_runner import OrtRunner

from .onnx_export import PRECISIONS, export_copy, as_sculpted, export_model
from .parity import check_parity
from .trt_lint import lint


def export_checked(model: nn.Module, directory: Path, precision: str = "fp32", opset: int = 18,
                   external_data: bool | None = None, check_tokens: int = 32,
                   say: Callable[[str], None] = print) -> dict:
    """Export `model` (sculpted or dense) into `directory`, verify it, and return the metrics."""
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
