"""reform: correct the kept weights from the omitted ones and calibration data.

Writes `reform/weights.safetensors` (tensors named as in the sliced model), which the
slice stage applies on top of the search stage's cut.
"""

from __future__ import annotations

from .context import StageContext

NAME = "reform"


def options(ctx: StageContext) -> dict:
    return {"method": ctx.recipe.reform.method}


def inputs(ctx: StageContext) -> list[str]:
    return []


def run(ctx: StageContext) -> None:
    method = ctx.recipe.reform.method
    if method == "none":
        ctx.artifact.skip(NAME, "reform.method is 'none': the kept weights are used as they are",
                          options=options(ctx))
        return
    raise AssertionError(f"unhandled reform method {method!r}")  # the recipe type admits no other value
