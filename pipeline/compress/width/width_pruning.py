"""Structured width pruning: a scoring rule, an allocation and an optional weight correction.

magnitude, wanda-sp, flap and goa differ only in how they score a layer's units (per query
head, KV group and MLP channel), how many units each layer keeps (uniform or global, see
`layer_plans`) and how they correct the output projections afterwards (nothing, a least-squares
refit, a compensating bias). This module is the loop they share: statistics from one streamed
pass, a GQA-legal LayerSpec per layer, and the corrected tensors named as in the sliced model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.compress.calibration.projection_statistics import (
    InputStatistics,
    LayerEdit,
    LayerStatistics,
    ProjectionEdit,
    stream_statistics,
)
from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.compress.reform.projection_corrections import compensation_bias, least_squares_refit
from pipeline.compress.registry import MethodContext, MethodOptions, MethodResult
from pipeline.models.adapters import ATTENTION_OUTPUT, MLP_OUTPUT, FamilyAdapter
from pipeline.models.slicing import head_rows
from pipeline.models.spec import ArchSpec, BaseDims, LayerSpec

from .layer_plans import LayerPlan, uniform_plan
from .legal_widths import DEFAULT_MLP_MULTIPLE, layer_spec

Statistics = Literal["none", "diagonal", "full"]
# (layer module, its statistics or None, its plan) -> scores of its heads, KV groups and channels
ScoringRule = Callable[[nn.Module, "LayerStatistics | None", LayerPlan], LayerImportance]
# (source weight, input statistics, kept input columns, source bias) -> the pruned projection
Correction = Callable[[torch.Tensor, "InputStatistics | None", torch.Tensor, "torch.Tensor | None"], ProjectionEdit]


class WidthOptions(MethodOptions):
    """Options every uniform width method shares."""

    mlp_multiple: int = Field(DEFAULT_MLP_MULTIPLE, ge=1)  # MLP widths snap to this many channels
    keep_first: int = Field(0, ge=0)  # leading layers left dense (LLM-Pruner's code leaves 3); the rest make up the ratio
    keep_last: int = Field(0, ge=0)  # trailing layers left dense (LLM-Pruner's code leaves 1)
    # fraction of attention parameters each pruned layer keeps (nearest legal GQA shape); None = the same
    # fraction as the MLP (the papers' split); 1.0 keeps attention whole (SmolLM2's heads are precious)
    attention_ratio: float | None = Field(None, gt=0, le=1)


# ---- corrections of an output projection -----------------------------------------------
def keep_columns(weight: torch.Tensor, stats: InputStatistics | None, kept: torch.Tensor,
                 bias: torch.Tensor | None) -> ProjectionEdit:
    """Plain pruning: the kept columns as they are."""
    return ProjectionEdit(kept)


def refit_columns(weight: torch.Tensor, stats: InputStatistics | None, kept: torch.Tensor,
                  bias: torch.Tensor | None) -> ProjectionEdit:
    """Least squares: the kept columns absorb what the removed ones contributed on calibration data."""
    return ProjectionEdit(kept, weight=least_squares_refit(weight.detach().cpu(), stats.second_moment, kept))


def compensate_bias(weight: torch.Tensor, stats: InputStatistics | None, kept: torch.Tensor,
                    bias: torch.Tensor | None) -> ProjectionEdit:
    """FLAP: a bias carrying the removed columns' mean contribution (added to the source's own bias)."""
    extra = compensation_bias(weight.detach().cpu(), stats.mean, kept)
    return ProjectionEdit(kept, bias=extra if bias is None else bias.detach().cpu().double() + extra)


# ---- one layer ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCut:
    spec: LayerSpec
    edit: LayerEdit


def cut_layer(adapter, base: BaseDims, index: int, layer: nn.Module, importance: LayerImportance, plan: LayerPlan,
              stats: LayerStatistics | None, correction: Correction) -> LayerCut:
    """The GQA-legal LayerSpec keeping the best units of `plan`, and its corrected projections.

    A module that loses nothing is left as it is (no refit, no bias).
    """
    spec = layer_spec(index, importance, base, plan.shape, plan.width)
    o, down = adapter.attention_linears(layer).o, adapter.mlp_linears(layer).down
    head_cols = head_rows(spec.q_heads, base.head_dim) if spec.has_attention else torch.empty(0, dtype=torch.long)
    channels = torch.tensor(spec.mlp_channels or (), dtype=torch.long)
    edits = []
    for linear, kept, module_stats, mode in ((o, head_cols, stats and stats.attention, spec.attention),
                                             (down, channels, stats and stats.mlp, spec.mlp)):
        pruned = mode == "keep" and len(kept) < linear.in_features
        edits.append(correction(linear.weight, module_stats, kept, linear.bias) if pruned else ProjectionEdit(kept))
    attention, mlp = edits
    spec = replace(spec, attention_out_bias=attention.bias is not None, mlp_out_bias=mlp.bias is not None)
    return LayerCut(spec, LayerEdit(attention, mlp))


def sliced_weights(adapter: FamilyAdapter, cuts: list[LayerCut], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The corrected tensors of every layer, named as in the sliced model (position = index in the spec)."""
    weights = {}
    for pos, cut in enumerate(cuts):
        for role, edit in ((ATTENTION_OUTPUT, cut.edit.attention), (MLP_OUTPUT, cut.edit.mlp)):
            name = adapter.output_projection_name(pos, role)
            if edit.weight is not None:
                weights[f"{name}.weight"] = edit.weight.to(dtype).contiguous()
            if edit.bias is not None:
                weights[f"{name}.bias"] = edit.bias.to(dtype).contiguous()
    return weights


# ---- the shared loops ---------------------------------------------------------------------
def cut_layers(ctx: MethodContext, plans: list[LayerPlan], scoring: ScoringRule, correction: Correction = keep_columns,
               statistics: Statistics = "none", sequential: bool = False, desc: str = "width") -> list[LayerCut]:
    """Score and cut every layer as `plans` says, with statistics from one streamed pass.

    `sequential`: each layer is cut (and corrected) before the next one's statistics are
    taken, so those come from the pruned model; otherwise all come from the dense model.
    """
    cuts: list[LayerCut] = []

    def on_layer(index: int, layer: nn.Module, stats: LayerStatistics | None) -> LayerEdit | None:
        cut = cut_layer(ctx.adapter, ctx.base, index, layer, scoring(layer, stats, plans[index]), plans[index], stats,
                        correction)
        cuts.append(cut)
        return cut.edit if sequential else None

    if statistics == "none":
        for index, layer in enumerate(ctx.adapter.layers(ctx.model)):
            on_layer(index, layer, None)
    else:
        stream_statistics(ctx.model, ctx.adapter, ctx.calibration, on_layer, full=statistics == "full",
                          batch_size=ctx.batch_size, progress=ctx.progress, desc=desc)
    return cuts


def width_result(ctx: MethodContext, cuts: list[LayerCut], notes: dict, metrics: dict | None = None) -> MethodResult:
    spec = ArchSpec(ctx.base, tuple(cut.spec for cut in cuts), notes=notes).validate()
    dtype = ctx.adapter.embed_tokens(ctx.model).weight.dtype
    return MethodResult(spec=spec, weights=sliced_weights(ctx.adapter, cuts, dtype), metrics=dict(metrics or {}))


def prune_uniformly(ctx: MethodContext, ratio: float, options: WidthOptions, scoring: ScoringRule,
                    correction: Correction = keep_columns, statistics: Statistics = "none", sequential: bool = False,
                    notes: dict | None = None) -> MethodResult:
    """Every pruned layer keeps the same shape (same ratio per module), filled by `scoring`."""
    plans = uniform_plan(ctx.base, ratio, options.mlp_multiple, options.keep_first, options.keep_last,
                         options.attention_ratio)
    cuts = cut_layers(ctx, plans, scoring, correction, statistics, sequential, desc=(notes or {}).get("method", "width"))
    return width_result(ctx, cuts, {**(notes or {}), **options.model_dump()})
