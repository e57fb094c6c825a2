"""build: the edge kit (always), then a TensorRT engine for the GPU at hand (when TensorRT and a GPU are here).

Writes `kit/` (recorded as its own stage, so it exists even when no engine can be built:
see exporters/edge_kit.py) and `build/model.plan` + `build/timing.cache` + `build/io.json` (the
graph's I/O, which `validators/trt_runner.py` reads beside the engine to run it in validate).
Without TensorRT or a GPU the build stage is recorded `skipped` with the reason and the run
carries on. An int4/int8 export (ONNX Runtime's MatMulNBits) cannot be built for TensorRT: the
stage refuses it before writing anything (`StageNotApplicable`: skipped in `sculpt run`, an error
from `sculpt build`).
"""

from __future__ import annotations

from exporters.edge_kit import write_kit
from exporters.onnx_io import GraphIO
from exporters.trt_build import build_engine, device_info, import_tensorrt, unavailable_reason
from exporters.trt_engine import BuildError
from exporters.trt_lint import lint
from exporters.trt_plan import BuildPlan

from ..errors import SculptError
from . import StageNotApplicable
from .context import StageContext

NAME = "build"
KIT = "kit"


def options(ctx: StageContext) -> dict:
    return ctx.recipe.build.model_dump(mode="json")


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("export")
    return ["export/model.onnx", "export/io.json"] + (
        ["export/model.onnx.data"] if (ctx.artifact.path / "export/model.onnx.data").is_file() else [])


def run(ctx: StageContext) -> None:
    section = ctx.recipe.build
    export_dir = ctx.artifact.path / "export"
    io = GraphIO.load(export_dir)
    if io.quantized:
        raise StageNotApplicable(
            f"TensorRT cannot build the {io.quantized} export: its weights are ONNX Runtime MatMulNBits ops, which "
            "TensorRT does not parse, and int4/int8 for TensorRT (NVIDIA ModelOpt) is not supported here; export with "
            "--export-precision fp16 or fp32 to build an engine")
    plan = BuildPlan.from_section(section, io, io.dtype)
    report = lint(export_dir / plan.onnx_file, section.target, plan.lint_profiles())
    if not ctx.artifact.is_current(KIT, options(ctx), inputs(ctx)):
        with ctx.artifact.stage(KIT, options=options(ctx), inputs=inputs(ctx)) as st:
            write_kit(st.dir, plan, export_dir, report)
            st.metrics.update(target=section.target, precision=plan.precision, strongly_typed=plan.strongly_typed,
                              lint_ok=report.ok, lint_findings=len(report.findings),
                              profiles={p.name: {"batch": p.batch, "seq": p.seq, "past": p.past}
                                        for p in plan.profiles})
        ctx.say(f"  edge kit written to {ctx.artifact.path / KIT}")
    trt = import_tensorrt()
    device = device_info() if trt is not None else {}
    reason = None if not report.ok else unavailable_reason(trt, device)
    if reason is not None:
        ctx.artifact.skip(NAME, reason, options=options(ctx))
        return
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=inputs(ctx)) as st:
        if not report.ok:
            first = report.errors[0]
            raise SculptError(f"the graph fails the TensorRT lint for {section.target} ({len(report.errors)} "
                              f"problem(s); see kit/lint.json), first: {first.message}")
        try:
            st.metrics.update(build_engine(plan, export_dir / plan.onnx_file, st.dir, trt, device,
                                           section.timing_cache, log=ctx.say))
        except BuildError as err:
            raise SculptError(str(err)) from None
