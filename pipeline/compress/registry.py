"""The compression methods a user can pick with `--method`, each producing an ArchSpec.

A method is a name, a typed options model (unknown keys are errors) and a function
from a MethodContext and a target ratio to a MethodResult. Methods register
themselves here when `pipeline.compress` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict

from pipeline.errors import SculptError
from pipeline.models.adapters import FamilyAdapter
from pipeline.models.spec import ArchSpec, BaseDims


class MethodOptions(BaseModel):
    """Base of every method's options: typed, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class MethodContext:
    model: Any  # the dense source model, eval mode
    tokenizer: Any
    adapter: FamilyAdapter
    base: BaseDims
    calibration: torch.Tensor  # [n, L] token windows from the calibration split
    seed: int = 0
    progress: bool = True
    out_dir: Path | None = None  # where a method may write extra files (logs, plots) for the artifact
    state_dir: Path | None = None  # survives interruption: checkpoints for resuming long methods
    batch_size: int = 1


@dataclass
class MethodResult:
    spec: ArchSpec
    # Tensors for the sliced model, named as in SculptedForCausalLM (e.g. a trained replacement's weights).
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    options: type[MethodOptions]
    run: Callable[[MethodContext, float, MethodOptions], MethodResult]


METHODS: dict[str, Method] = {}


def register(name: str, summary: str, options: type[MethodOptions] = MethodOptions):
    def decorate(run: Callable[[MethodContext, float, MethodOptions], MethodResult]):
        METHODS[name] = Method(name, summary, options, run)
        return run
    return decorate


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise SculptError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parse_options(method: Method, options: dict[str, Any] | None) -> MethodOptions:
    from pydantic import ValidationError

    try:
        return method.options(**(options or {}))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise SculptError(f"method {method.name!r}, option {where}: {first['msg']} "
                          f"(valid options: {', '.join(method.options.model_fields) or 'none'})") from None
