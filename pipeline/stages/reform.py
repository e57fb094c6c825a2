"""reform: correct the kept weights from the omitted ones and calibration data.

Reads `search/arch.json` (and `search/weights.safetensors` when the search method fitted
weights), slices the source model with them, and corrects every output projection (attention output,
MLP down) that lost input units with the recipe's method (see docs/reform.md). Writes:
- `reform/arch.json`: the architecture from here on (the search's; the `bias` method and `reform.bias` add
  output biases);
- `reform/weights.safetensors`: the corrected tensors, named as in the sliced model, which the
  slice stage applies after the search's (for a source streamed from disk, `reform/weights-NNNNN.safetensors`,
  one file per sculpted layer, written as each layer is done);
- `reform/report.json`: per projection, the output error before/after and the timings.
"""

from __future__ import annotations

import json

from safetensors.torch import load_file, save_file

from ..compress.reform.sequential_reform import (
    ReformOutcome,
    ReformSettings,
    pruned_inputs,
    reform_sculpted,
    reform_streamed,
    with_output_biases,
)
from ..models.lazy_weights import is_streamed
from ..models.adapters import OUTPUT_PROJECTIONS
from ..models.slicing import slice_model
from ..models.spec import ArchSpec
from .context import StageContext
from .slice import apply_weights, recorded_output

NAME = "reform"
SEARCH_WEIGHTS = "search/weights.safetensors"
LAYER_WEIGHTS = "weights-{position:05d}.safetensors"  # a streamed source's fixes, one file per sculpted layer


def options(ctx: StageContext) -> dict:
    reform = ctx.recipe.reform
    if reform.method == "none":
        return {"method": "none"}
    settings = {"rho": reform.rho, "iterations": reform.iterations} if reform.method == "admm" else {}
    if reform.bias and reform.method in ("admm", "least-squares"):
        settings["bias"] = True  # absent when false, so older artifacts' options stay unchanged
    return {"method": reform.method, **settings, "sequential": reform.sequential, "model": ctx.model_options(),
            "calibration": ctx.calibration_options(*ctx.recipe.reform_windows())}


def inputs(ctx: StageContext) -> list[str]:
    if ctx.recipe.reform.method == "none":
        return []
    ctx.artifact.require("search")
    return ["search/arch.json"] + ([SEARCH_WEIGHTS] if recorded_output(ctx, SEARCH_WEIGHTS) else [])


def run(ctx: StageContext) -> None:
    reform = ctx.recipe.reform
    if reform.method == "none":
        ctx.artifact.skip(NAME, "reform.method is 'none': the kept weights are used as they are",
                          options=options(ctx))
        return
    files = inputs(ctx)
    spec = ArchSpec.from_json((ctx.artifact.path / "search/arch.json").read_text())
    if not any(pruned_inputs(layer, spec) for layer in spec.layers):
        ctx.artifact.skip(NAME, "no kept output projection lost input units: there is nothing to reform",
                          options=options(ctx))
        return
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=files) as st:
        if reform.method == "bias" or reform.bias:  # the fitted intercepts need somewhere to live
            spec = with_output_biases(spec)
        loaded = ctx.source()
        search_weights = load_file(ctx.artifact.path / SEARCH_WEIGHTS) if SEARCH_WEIGHTS in files else {}
        windows, provenance = ctx.calibration(*ctx.recipe.reform_windows())
        settings = ReformSettings(reform.method, reform.rho, reform.iterations, reform.sequential)
        if is_streamed(loaded.model):  # one dense and one sculpted layer in memory; each layer's fix saved at once
            def save_layer(position: int, tensors: dict) -> None:
                save_file({name: t.contiguous() for name, t in tensors.items()},
                          st.dir / LAYER_WEIGHTS.format(position=position))

            outcome = reform_streamed(loaded.model, spec, windows, settings, ctx.recipe.data.batch_size,
                                      ctx.progress, search_weights, on_layer=save_layer)
        else:
            model = slice_model(loaded.model, spec)
            if search_weights:
                apply_weights(model, search_weights, SEARCH_WEIGHTS)
            outcome = reform_sculpted(model, loaded.model, spec, windows, settings, ctx.recipe.data.batch_size,
                                      ctx.progress)
            save_file({name: t.contiguous() for name, t in outcome.tensors.items()}, st.dir / "weights.safetensors")
        (st.dir / "arch.json").write_text(spec.to_json() + "\n")
        report = reform_report(outcome, settings, provenance)
        (st.dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        st.metrics.update(report)
        ctx.say(f"  reform: {summary_line(report)}")


def reform_report(outcome: ReformOutcome, settings: ReformSettings, calibration: dict) -> dict:
    """The stage's report: settings, data, where the time went, and the error of each projection."""
    summary = {}
    for module in OUTPUT_PROJECTIONS:
        rows = [r for r in outcome.reports if r.module == module]
        if rows:
            summary[module] = {"count": len(rows),
                               "error_before_mean": sum(r.error_before for r in rows) / len(rows),
                               "error_after_mean": sum(r.error_after for r in rows) / len(rows)}
    return {"method": settings.method, "rho": settings.rho, "iterations": settings.iterations,
            "sequential": settings.sequential, "calibration": calibration, "tokens": outcome.tokens,
            "seconds": outcome.seconds, "summary": summary,
            "projections": [r.as_dict() for r in outcome.reports]}


def summary_line(report: dict) -> str:
    parts = [f"{module} error {s['error_before_mean']:.3g} -> {s['error_after_mean']:.3g} (mean of {s['count']})"
             for module, s in report["summary"].items()]
    return f"{'; '.join(parts)}; {report['seconds']['total']:.0f} s"
