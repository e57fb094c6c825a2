"""The width-pruning baselines users compare with: magnitude (L2), Wanda-sp and FLAP.

Each is a scoring rule from `width_scores` plugged into the shared loop of `width_pruning`.
Implemented as their papers/code do, except where GQA forces a change (see width_scores
and docs/width-methods.md): heads are cut GQA-legally (whole KV groups, or the same number
of query heads from every kept group) and MLP widths snap to `mlp_multiple`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.compress.calibration.projection_statistics import LayerStatistics, stream_statistics
from pipeline.compress.importance.baseline_scores import (
    FLAP_DEFAULT_METRIC,
    FlapMetric,
    flap_adaptive_scores,
    flap_uniform_importance,
    magnitude_importance,
    wanda_sp_importance,
)
from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.compress.registry import MethodContext, MethodOptions, MethodResult, register

from .layer_plans import global_plan
from .legal_widths import DEFAULT_MLP_MULTIPLE
from .width_pruning import WidthOptions, compensate_bias, cut_layer, keep_columns, prune_uniformly, width_result


@register("magnitude", "LLM-Pruner's L2 baseline: squared weight norm of each coupled head/channel group, "
                       "same ratio in every layer, data-free", WidthOptions)
def run_magnitude(ctx: MethodContext, ratio: float, options: WidthOptions) -> MethodResult:
    hd, gs = ctx.base.head_dim, ctx.base.group_size

    def scoring(layer, stats, plan) -> LayerImportance:
        attention = [linear.weight for linear in ctx.adapter.attention_linears(layer)]
        mlp = [linear.weight for linear in ctx.adapter.mlp_linears(layer)]
        return magnitude_importance(*attention, *mlp, head_dim=hd, group_size=gs)

    return prune_uniformly(ctx, ratio, options, scoring, notes={"method": "magnitude"})


class WandaSpOptions(WidthOptions):
    sequential: bool = True  # as FLAP's prune_wanda_sp: each layer is scored on the pruned model's activations


@register("wanda-sp", "structured Wanda: mean |W| x activation norm of each output-projection input column, "
                      "same ratio in every layer", WandaSpOptions)
def run_wanda_sp(ctx: MethodContext, ratio: float, options: WandaSpOptions) -> MethodResult:
    hd, gs = ctx.base.head_dim, ctx.base.group_size

    def scoring(layer, stats: LayerStatistics, plan) -> LayerImportance:
        o, down = ctx.adapter.attention_linears(layer).o.weight, ctx.adapter.mlp_linears(layer).down.weight
        return wanda_sp_importance(o, down, stats, hd, gs)

    return prune_uniformly(ctx, ratio, options, scoring, statistics="diagonal", sequential=options.sequential,
                           notes={"method": "wanda-sp"})


class FlapOptions(MethodOptions):
    metric: FlapMetric = FLAP_DEFAULT_METRIC  # wifv: Var(x_j) ||W[:, j]||^2; ifv: Var(x_j); wifn: Wanda-like
    structure: Literal["AL-AM", "UL-UM"] = "AL-AM"  # adaptive across layers and modules, or uniform
    bias: bool = True  # bias compensation of the removed channels' mean output
    mlp_multiple: int = Field(DEFAULT_MLP_MULTIPLE, ge=1)


@register("flap", "FLAP: fluctuation of output-projection inputs, standardised and ranked across all layers "
                  "(KV groups and channels by parameter cost), with bias compensation", FlapOptions)
def run_flap(ctx: MethodContext, ratio: float, options: FlapOptions) -> MethodResult:
    hd, gs = ctx.base.head_dim, ctx.base.group_size
    correction = compensate_bias if options.bias else keep_columns
    notes = {"method": "flap", **options.model_dump()}

    def projections(layer):
        return ctx.adapter.attention_linears(layer).o.weight, ctx.adapter.mlp_linears(layer).down.weight

    if options.structure == "UL-UM":
        def scoring(layer, stats, plan) -> LayerImportance:
            return flap_uniform_importance(*projections(layer), stats, options.metric, hd, gs)

        return prune_uniformly(ctx, ratio, WidthOptions(mlp_multiple=options.mlp_multiple), scoring, correction,
                               statistics="diagonal", notes=notes)

    statistics: list[LayerStatistics] = []
    groups, channels = [], []

    def collect(index, layer, stats: LayerStatistics) -> None:
        group_scores, channel_scores = flap_adaptive_scores(*projections(layer), stats, options.metric, hd, gs)
        statistics.append(stats)
        groups.append(group_scores)
        channels.append(channel_scores)

    stream_statistics(ctx.model, ctx.adapter, ctx.calibration, collect, batch_size=ctx.batch_size,
                      progress=ctx.progress, desc="flap")
    plans = global_plan(ctx.base, ratio, groups, channels, options.mlp_multiple, out_bias=options.bias)
    cuts = [cut_layer(ctx.adapter, ctx.base, index, layer,
                      LayerImportance(groups[index].repeat_interleave(gs), groups[index], channels[index]),
                      plans[index], statistics[index], correction)
            for index, layer in enumerate(ctx.adapter.layers(ctx.model))]
    metrics = {"kv_heads_per_layer": [plan.shape.num_kv_heads if plan.shape else 0 for plan in plans],
               "mlp_width_per_layer": [plan.width for plan in plans]}
    return width_result(ctx, cuts, notes, metrics)
