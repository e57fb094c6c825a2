"""Reform a sculpted model's output projections layer by layer, from calibration windows.

Every kept output projection (attention output, MLP down) whose input units were pruned gets corrected kept columns
(and, for `bias`, an output bias) from the second moment of its *dense* input: all heads'
attention context, all channels' act(gate) * up. A kept head's context and a kept channel's
activation are the same in the sliced layer as in the dense one (each depends only on its own
q/k/v or gate/up rows), so the dense input restricted to the kept units is exactly what the
sculpted layer feeds its projection, and the target W X is the original projection's output.

Sequential (default): the windows flow through the sculpted model being built, sublayer by
sublayer, so each projection is fitted on inputs that already carry the earlier corrections
(SparseGPT/Wanda style). Otherwise the inputs come from the original model's activations.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.compress.calibration.layer_stream import GramAccumulator, LayerStream, capture_inputs
from pipeline.models.adapters import ATTENTION_OUTPUT, MLP_OUTPUT, OUTPUT_PROJECTIONS, FamilyAdapter, adapter_for
from pipeline.models.slicing import head_rows, sculpted_config, slice_layer
from pipeline.models.spec import ArchSpec, LayerSpec

from .projection_corrections import ADMM_ITERATIONS, ADMM_RHO, output_energy, output_error, reform_columns


class _Stop(Exception):
    """Ends a module's forward once the wanted input has been seen."""


def projection_input(projection: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    """The input `projection` receives while `run()` runs; the rest of the forward is skipped."""
    seen: list[torch.Tensor] = []

    def stop(_module: nn.Module, inputs: tuple) -> None:
        seen.append(inputs[0])
        raise _Stop

    handle = projection.register_forward_pre_hook(stop)
    try:
        run()
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the sublayer never called its output projection")
    return seen[0]


# ---- which projections ----------------------------------------------------------
def pruned_inputs(layer: LayerSpec, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """{projection: kept input columns, in sliced order} for the kept projections that lost inputs."""
    base, kept = spec.base, {}
    if layer.attention == "keep" and layer.q_heads is not None and len(layer.q_heads) < base.num_heads:
        kept[ATTENTION_OUTPUT] = head_rows(layer.q_heads, base.head_dim)
    if layer.mlp == "keep" and layer.mlp_channels is not None and len(layer.mlp_channels) < base.intermediate_size:
        kept[MLP_OUTPUT] = torch.tensor(layer.mlp_channels, dtype=torch.long)
    return kept


def with_output_biases(spec: ArchSpec) -> ArchSpec:
    """`spec` with an output bias on every projection that lost inputs (where bias compensation goes)."""
    layers = []
    for layer in spec.layers:
        kept = pruned_inputs(layer, spec)
        layers.append(replace(layer, attention_out_bias=layer.attention_out_bias or ATTENTION_OUTPUT in kept,
                              mlp_out_bias=layer.mlp_out_bias or MLP_OUTPUT in kept))
    return replace(spec, layers=tuple(layers)).validate()


# ---- results ----------------------------------------------------------------------
@dataclass(frozen=True)
class ReformSettings:
    method: str = "admm"  # one of projection_corrections.REFORM_METHODS
    rho: float = ADMM_RHO
    iterations: int = ADMM_ITERATIONS
    sequential: bool = True


@dataclass(frozen=True)
class ProjectionReport:
    position: int  # layer index in the sculpted model
    source: int  # layer index in the source model
    module: str  # ATTENTION_OUTPUT or MLP_OUTPUT
    inputs: int  # input units of the dense projection
    kept: int
    error_before: float  # E||W x_K - W x||^2 / E||W x||^2 with the plain pruned weights
    error_after: float  # the same with the reformed weights (and bias)
    statistics_s: float  # forward passes that collected the inputs
    solve_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReformOutcome:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # named as in the sculpted model
    reports: list[ProjectionReport] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # statistics, solve, stream, total
    tokens: int = 0


# ---- the reform loop ------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    """One layer of the stream: the dense layer it runs (by index) and, if kept, its sculpted position."""

    dense_index: int
    position: int | None
    spec: LayerSpec | None
    kept: dict[str, torch.Tensor]


@torch.no_grad()
def reform_sculpted(sculpted: nn.Module, dense: nn.Module, spec: ArchSpec, windows: torch.Tensor,
                    settings: ReformSettings, batch_size: int = 1, progress: bool = True) -> ReformOutcome:
    """Correct, in place, every projection of `sculpted` (sliced from `dense` by `spec`) that lost inputs.

    Moves `sculpted` to `dense`'s device. Returns the corrected tensors by name, a report per
    projection and where the time went.
    """
    adapter = adapter_for(dense.config)
    sculpted.to(adapter.embed_tokens(dense).weight.device)  # slice_model builds on the CPU
    steps = _steps(spec, settings)
    stream = LayerStream(sculpted if settings.sequential else dense, adapter, windows, batch_size)
    reformer = _Reformer(adapter, settings, stream.tokens)
    reformer.names = {id(p): n for n, p in sculpted.named_parameters()}
    dense_layers, layers = adapter.layers(dense), adapter.layers(sculpted)
    for step in tqdm(steps, desc=f"reform ({settings.method})", unit="layer", disable=not progress):
        layer = layers[step.position] if step.position is not None else None
        _reform_step(adapter, stream, reformer, step, dense_layers[step.dense_index], layer, settings)
    return reformer.finish()


@torch.no_grad()
def reform_streamed(dense: nn.Module, spec: ArchSpec, windows: torch.Tensor, settings: ReformSettings,
                    batch_size: int = 1, progress: bool = True, weights: dict[str, torch.Tensor] | None = None,
                    on_layer: Callable[[int, dict[str, torch.Tensor]], None] | None = None) -> ReformOutcome:
    """`reform_sculpted` without a whole sculpted model: for a dense model streamed from disk
    (pipeline/models/lazy_weights.py), or any model too big to hold twice.

    The stream starts from the dense embeddings (the sculpted model's are a copy); at each step the dense layer
    is read, the sculpted layer sliced from it (`weights`, e.g. the search's fitted tensors, applied by name),
    corrected, and both dropped, so one dense and one sculpted layer are in memory at a time. `on_layer(position,
    tensors)` gets each layer's corrected tensors (then the outcome keeps none); without it the outcome keeps
    them all, as `reform_sculpted` does. Same numbers as `reform_sculpted`: the same steps on the same inputs."""
    adapter = adapter_for(dense.config)
    config = sculpted_config(dense.config, spec)
    steps = _steps(spec, settings)
    stream = LayerStream(dense, adapter, windows, batch_size)
    reformer = _Reformer(adapter, settings, stream.tokens)
    dense_layers, weights = adapter.layers(dense), weights or {}
    for step in tqdm(steps, desc=f"reform ({settings.method})", unit="layer", disable=not progress):
        dense_layer, layer = dense_layers[step.dense_index], None
        with stream.hold(dense_layer):
            if step.position is not None:
                layer = slice_layer(dense, spec, step.position, config).to(stream.hidden[0].device)
                prefix = adapter.layer_prefix(step.position)
                names = {name: f"{prefix}.{name}" for name, _ in layer.named_parameters()}
                own = {local: weights[full] for local, full in names.items() if full in weights}
                if own:
                    _overwrite(layer, own, prefix)
                reformer.names = {id(p): names[n] for n, p in layer.named_parameters()}
            _reform_step(adapter, stream, reformer, step, dense_layer, layer, settings)
        if on_layer is not None and step.position is not None:
            tensors, reformer.outcome.tensors = reformer.outcome.tensors, {}
            if tensors:
                on_layer(step.position, tensors)
        del layer
    return reformer.finish()


def _overwrite(layer: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    params = dict(layer.named_parameters())
    for name, tensor in tensors.items():
        if params[name].shape != tensor.shape:
            raise ValueError(f"{prefix}.{name} has shape {tuple(tensor.shape)}, the sliced layer "
                             f"{tuple(params[name].shape)}")
        params[name].copy_(tensor)


def _steps(spec: ArchSpec, settings: ReformSettings) -> list[_Step]:
    """The layers the stream passes: every sculpted layer (sequential), or the dense layers up to the last one
    with something to reform (on the dense model's activations)."""
    steps = [_Step(layer.source, pos, layer, pruned_inputs(layer, spec)) for pos, layer in enumerate(spec.layers)]
    if settings.sequential:
        return steps
    by_source = {step.dense_index: step for step in steps if step.kept}
    return [by_source.get(i, _Step(i, None, None, {})) for i in range(max(by_source, default=-1) + 1)]


def _reform_step(adapter: FamilyAdapter, stream: LayerStream, reformer: _Reformer, step: _Step,
                 dense_layer: nn.Module, layer: nn.Module | None, settings: ReformSettings) -> None:
    """Reform the projections of one step's layer and advance the stream past it."""
    if settings.sequential:
        work = _SequentialLayer(adapter, stream, dense_layer, layer, step.spec)
    else:
        work = _OriginalLayer(adapter, stream, dense_layer, step.kept)
    for module in OUTPUT_PROJECTIONS:
        started = time.perf_counter()
        moments = work.collect(module, step.kept.get(module))
        statistics_s = reformer.lap("statistics", started)
        if moments is not None:
            reformer.fix(dense_layer, layer, module, moments, step, statistics_s)
        started = time.perf_counter()
        work.advance(module)
        reformer.lap("stream", started)


class _Reformer:
    """Solves each projection, writes it into the sculpted model, and keeps the books."""

    def __init__(self, adapter: FamilyAdapter, settings: ReformSettings, tokens: int) -> None:
        self.adapter, self.settings = adapter, settings
        self.names: dict[int, str] = {}  # id of a sculpted parameter -> its name in the sculpted model
        self.outcome = ReformOutcome(tokens=tokens)
        self.seconds = {"statistics": 0.0, "solve": 0.0, "stream": 0.0}
        self.began = time.perf_counter()

    def lap(self, what: str, since: float) -> float:
        spent = time.perf_counter() - since
        self.seconds[what] += spent
        return spent

    def fix(self, dense_layer: nn.Module, layer: nn.Module, module: str, moments: GramAccumulator, step: _Step,
            statistics_s: float) -> None:
        started, kept, settings = time.perf_counter(), step.kept[module], self.settings
        original = self.adapter.output_projection(dense_layer, module)
        weight = original.weight.detach().double().cpu()
        # the accumulator gives up its storage: one in x in float64 matrix (2.9 GB for a 7B MLP), not two; or, from
        # at most half as many tokens as inputs, the token rows (LowRankMoment), which every solve here takes as is
        second, mean = moments.take_second_moment().cpu(), moments.input_mean().cpu()
        target = self.adapter.output_projection(layer, module)
        # a bias the dense projection lacks is a method's compensation (FLAP's): refit it with the weights
        compensated = target.bias is not None and original.bias is None
        fix = reform_columns(settings.method, weight, second, mean, kept, settings.rho, settings.iterations,
                             intercept=compensated)
        self._store(target.weight, fix.weight)
        if fix.bias is not None:
            if target.bias is None:
                raise ValueError(f"layer {step.position} {module} has no bias to hold the compensation: slice "
                                 "the model from with_output_biases(spec)")
            own = original.bias.detach().double().cpu() if original.bias is not None else 0.0
            self._store(target.bias, own + fix.bias)
        energy = output_energy(weight, second)
        report = ProjectionReport(
            step.position, step.dense_index, module, weight.shape[1], len(kept),
            error_before=output_error(weight, second, weight[:, kept], kept, energy=energy),
            error_after=output_error(weight, second, fix.weight, kept, fix.bias, mean, energy=energy),
            statistics_s=round(statistics_s, 3), solve_s=round(self.lap("solve", started), 3))
        self.outcome.reports.append(report)

    def _store(self, parameter: nn.Parameter, value: torch.Tensor) -> None:
        parameter.copy_(value.to(parameter))
        self.outcome.tensors[self.names[id(parameter)]] = parameter.detach().cpu().clone()

    def finish(self) -> ReformOutcome:
        self.outcome.seconds = {**{k: round(v, 3) for k, v in self.seconds.items()},
                                "total": round(time.perf_counter() - self.began, 3)}
        return self.outcome


class _SequentialLayer:
    """One sculpted layer on the sculpted stream: dense inputs for the statistics, then the corrected sublayer."""

    def __init__(self, adapter: FamilyAdapter, stream: LayerStream, dense_layer: nn.Module, layer: nn.Module,
                 spec: LayerSpec) -> None:
        self.adapter, self.stream, self.dense_layer, self.layer, self.spec = adapter, stream, dense_layer, layer, spec
        self.kept_inputs: list[torch.Tensor | None] | None = None  # per window, for the projection just reformed

    def _run(self, layer: nn.Module, module: str, hidden: torch.Tensor) -> torch.Tensor:
        """The residual branch of `module`'s sublayer of `layer` (sculpted or dense) on `hidden`."""
        attention = module == ATTENTION_OUTPUT
        mode = self.spec.attention if attention else self.spec.mlp
        norm = (self.adapter.attention_norm if attention else self.adapter.mlp_norm)(self.layer)
        sublayer = (self.adapter.attention if attention else self.adapter.mlp)(layer)
        if attention and mode == "keep":
            out = sublayer(hidden_states=norm(hidden), attention_mask=self.stream.mask(self.layer),
                           position_embeddings=self.stream.position_embeddings(self.layer))
            out = out[0] if isinstance(out, tuple) else out
        else:
            out = sublayer(norm(hidden))
        return self._post_norm(layer, module, out) if mode == "keep" else out

    def _post_norm(self, layer: nn.Module, module: str, out: torch.Tensor) -> torch.Tensor:
        """The sublayer's output as the residual stream gets it: through its post-norm, where the family has one."""
        norm = self.adapter.post_norm(layer, module)
        return out if norm is None else norm(out)

    def collect(self, module: str, kept: torch.Tensor | None) -> GramAccumulator | None:
        if kept is None:
            return None
        projection = self.adapter.output_projection(self.dense_layer, module)
        moments, self.kept_inputs = GramAccumulator(), []
        for hidden in self.stream.hidden:
            x = projection_input(projection, lambda: self._run(self.dense_layer, module, hidden))
            moments.add(x)
            self.kept_inputs.append(x[..., kept.to(x.device)])
        return moments

    def advance(self, module: str) -> None:
        if (self.spec.attention if module == ATTENTION_OUTPUT else self.spec.mlp) == "skip":
            return
        hidden = self.stream.hidden
        for i, h in enumerate(hidden):
            if self.kept_inputs is not None:  # the corrected projection on the stored kept inputs
                out = self._post_norm(self.layer, module,
                                      self.adapter.output_projection(self.layer, module)(self.kept_inputs[i]))
                self.kept_inputs[i] = None  # free as we go
            else:
                out = self._run(self.layer, module, h)
            hidden[i] = h + out
        self.kept_inputs = None


class _OriginalLayer:
    """One dense layer on the dense stream: its projections' input statistics, then its dense output."""

    def __init__(self, adapter: FamilyAdapter, stream: LayerStream, dense_layer: nn.Module,
                 kept: dict[str, torch.Tensor]) -> None:
        self.stream, self.dense_layer = stream, dense_layer
        self.projections = {name: adapter.output_projection(dense_layer, name) for name in kept}
        self.moments: dict[str, GramAccumulator] = {}

    def collect(self, module: str, kept: torch.Tensor | None) -> GramAccumulator | None:
        if module == OUTPUT_PROJECTIONS[0]:  # one dense pass gives every statistic and the layer's output
            self.moments = {name: GramAccumulator() for name in self.projections}
            with capture_inputs(self.projections, lambda name, x: self.moments[name].add(x)):
                self.outputs = self.stream.run(self.dense_layer)
        return self.moments.get(module)

    def advance(self, module: str) -> None:
        if module == OUTPUT_PROJECTIONS[-1]:
            self.stream.advance(self.outputs)
