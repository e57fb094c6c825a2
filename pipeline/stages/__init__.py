"""The pipeline's stages, in order. Each module has NAME, options(ctx), inputs(ctx) and run(ctx):
options and inputs are what the stage's result depends on (a re-run with the same ones is a no-op)."""

from . import build, export, reform, search, slice, validate
from .context import StageContext

STAGES = (search, reform, slice, export, build, validate)
STAGE_NAMES = tuple(stage.NAME for stage in STAGES)

__all__ = ["STAGES", "STAGE_NAMES", "StageContext"]
