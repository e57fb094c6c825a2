"""The compression methods a user can pick with `--method`, each producing an ArchSpec.

A method is a name, a typed options model (unknown keys are errors) and a function
from a MethodContext and a target ratio to a MethodResult. Methods register
themselves here when `pipeline.compress` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from pipeline.errors import SculptError
from pipeline.models.adapters import FamilyAdapter
from pipeline.models.spec import ArchSpec, BaseDims


class MethodOptions(BaseModel):
    """Base of every method's options: typed, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Store(Protocol):
    """Named values kept outside a method: the search stage backs each with a folder (pipeline/stages/
    method_store.py), so methods stay free of file I/O. A name's suffix says the form: `.json`, `.jsonl` (a list
    of JSON rows) or `.pt` (tensors). `save` is atomic: a reader sees the old value or the new one."""

    def load(self, name: str) -> Any | None: ...  # None when nothing was saved under `name` or it is unreadable

    def save(self, name: str, value: Any) -> None: ...


@dataclass
class MethodContext:
    model: Any  # the dense source model, eval mode
    tokenizer: Any
    adapter: FamilyAdapter
    base: BaseDims
    calibration: torch.Tensor  # [n, L] token windows from the calibration split
    seed: int = 0
    progress: bool = True
    outputs: Store | None = None  # extra results for the artifact (logs, tables): the stage's output folder
    state: Store | None = None  # survives interruption: checkpoints for resuming long methods
    cache: Store | None = None  # shared by every run on this machine (e.g. latency tables), keyed by what they hold
    machine: str = ""  # the processor, for what is measured on it (latency tables)
    batch_size: int = 1
    # builds where a search's candidates are scored, from a search/executor.py ScoringJob: None scores them here
    # (LocalExecutor); the search stage passes the recipe's `search.executor` (e.g. a pool of Ray actors)
    executor: Callable[[Any], Any] | None = None
    # (count, length) -> windows of the calibration split drawn apart from `calibration` (another seed), for a
    # method's held-out check at another length (the search stage supplies it; None where nothing does)
    held_out: Callable[[int, int], torch.Tensor] | None = None


@dataclass
class Convergence:
    """A search's generations, for the stage to chart: `history` rows as written to its log."""

    chart: str  # file name of the chart, e.g. convergence.png
    title: str
    history: list[dict]


@dataclass
class MethodResult:
    spec: ArchSpec
    # Tensors for the sliced model, named as in SculptedForCausalLM (e.g. a trained replacement's weights).
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    convergence: list[Convergence] = field(default_factory=list)  # searches' generations, charted by the stage


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
