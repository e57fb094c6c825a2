"""The pipeline's stages, in order, by name. Each is a module here (pipeline/stages/NAME.py or a package)
with NAME, options(ctx), inputs(ctx) and run(ctx): options and inputs are what the stage's result depends
on (a re-run with the same ones is a no-op).

A stage module is imported when its stage runs (`load_stage`), never here: export and build need the
optional `onnx` extra, and a base install (torch only) must still search, reform, slice and validate.
A stage that needs an extra declares it in `STAGES`; `needs_extra` turns its absence into `MissingExtra`,
one line naming the install command, which `sculpt run` records as the stage's skip reason.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from ..errors import SculptError
from .context import StageContext

# stage name -> the optional extra it needs (None: the base install runs it), in pipeline order
STAGES: dict[str, str | None] = {
    "search": None,
    "reform": None,
    "slice": None,
    "export": "onnx",
    "build": "onnx",
    "validate": None,
}
STAGE_NAMES = tuple(STAGES)
# extra of pyproject.toml -> the top-level modules it installs
EXTRAS: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "ray": ("ray",)}


class StageNotApplicable(SculptError):
    """A stage that cannot apply to this artifact as it is (a TensorRT build of an int4 ONNX Runtime graph, a stage
    whose extra is not installed): `sculpt run` records it as skipped with the message as the reason and goes on;
    the stage asked for by name fails with it (one line naming why and the fix)."""


class MissingExtra(StageNotApplicable):
    """Something needs an optional extra that is not installed; the message names the install command."""

    def __init__(self, what: str, extra: str, missing: list[str]) -> None:
        self.what, self.extra, self.missing = what, extra, list(missing)
        names = ", ".join(self.missing)
        super().__init__(f"{what} needs {names} (the {extra} extra), not installed here: "
                         f"pip install 'llm-sculpt[{extra}]'")


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that are not installed (empty when it is)."""
    return [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]


@contextmanager
def needs_extra(what: str, extra: str | None) -> Iterator[None]:
    """Run the block only where `extra` is installed: raise MissingExtra up front when a module of it is
    missing, and turn a ModuleNotFoundError for one of its modules inside the block into MissingExtra."""
    if extra is None:
        yield
        return
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(what, extra, missing)
    try:
        yield
    except ModuleNotFoundError as err:
        module = (err.name or "").split(".")[0]
        if module not in EXTRAS[extra]:
            raise
        raise MissingExtra(what, extra, [module]) from None


def check_stage_names(names: list[str]) -> None:
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise SculptError(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGE_NAMES)}")


def load_stage(name: str) -> ModuleType:
    """The module of stage `name`, imported now; MissingExtra when the stage's extra is not installed."""
    check_stage_names([name])
    with needs_extra(f"stage {name}", STAGES[name]):
        return importlib.import_module(f"{__name__}.{name}")


__all__ = ["STAGES", "STAGE_NAMES", "EXTRAS", "MissingExtra", "StageNotApplicable", "StageContext",
           "check_stage_names", "load_stage", "missing_modules", "needs_extra"]
