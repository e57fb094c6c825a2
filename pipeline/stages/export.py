"""export: the sliced model as ONNX with a KV cache, checked against PyTorch and linted for TensorRT.

Writes `export/model.onnx` (+ `model.onnx.data` above 2 GB), `export/io.json` (names, KV
heads per cache entry), `export/parity.json` and `export/lint.json`; with
`export.include_source`, the same for the dense source model in `export/source/`.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from exporters.checked_export import export_checked

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
