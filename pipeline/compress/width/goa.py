"""GOA: Greedy Output Approximation (Li, Dong & Lei, arXiv 2407.19126), as we read it.

The paper's formulas could not be retrieved (see docs/goa.md); this follows its stated design
with criteria we derived from its objective, approximating each layer's output:

* depth-2 units: a query head with its output-projection columns (V->O), and an MLP channel with its
  gate/up rows and down-projection column; every layer keeps the same GQA-legal shape;
* heads: greedy removal on the Gram matrix of the heads' output contributions (the
  "similarity-based" head metric); channels: E[a_j^2] ||W_down[:, j]||^2 (the
  "second-moment" metric), or the same greedy rule with `channel_rule: greedy`;
* reconstruction, two steps: the kept output-projection columns are refit by least squares
  so they absorb the removed units' contribution (before the units go), and the pass is
  sequential, so each layer is scored and refit on the outputs of the already pruned and
  reconstructed layers before it (greedy, layer by layer).
"""

from __future__ import annotations

from typing import Literal

import torch

from pipeline.compress.calibration.projection_statistics import InputStatistics, LayerStatistics, ProjectionEdit
from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.compress.importance.output_approximation import (
    contribution_gram,
    greedy_head_scores,
    greedy_removal,
    removal_scores,
    second_moment_scores,
)
from pipeline.compress.reform.projection_corrections import output_error
from pipeline.compress.registry import MethodContext, MethodResult, register

from .layer_plans import LayerPlan
from .width_pruning import WidthOptions, keep_columns, prune_uniformly, refit_columns


class GoaOptions(WidthOptions):
    channel_rule: Literal["second-moment", "greedy"] = "second-moment"  # MLP criterion (heads are always greedy)
    reconstruct: bool = True  # least-squares refit of the kept output-projection columns
    sequential: bool = True  # score and refit each layer on the pruned model's own activations


def goa_importance(o: torch.Tensor, down: torch.Tensor, stats: LayerStatistics, plan: LayerPlan, head_dim: int,
                   group_size: int, channel_rule: str = "second-moment") -> LayerImportance:
    """Scores under which keep_heads/top_units select exactly what greedy output approximation keeps."""
    head_gram = contribution_gram(o, stats.attention.second_moment, head_dim)
    q_heads, kv_groups = greedy_head_scores(head_gram, group_size, plan.shape)
    if channel_rule == "second-moment":
        channels = second_moment_scores(down, stats.mlp.square_mean)
    else:
        gram = contribution_gram(down, stats.mlp.second_moment)
        channels = removal_scores(greedy_removal(gram, len(gram) - plan.width), gram)
    return LayerImportance(q_heads, kv_groups, channels)


class ReconstructionLog:
    """The correction GOA applies (refit or plain), recording each projection's relative output
    error on calibration data both ways."""

    def __init__(self, reconstruct: bool) -> None:
        self.reconstruct = reconstruct
        self.plain: list[float] = []
        self.refit: list[float] = []

    def __call__(self, weight: torch.Tensor, stats: InputStatistics | None, kept: torch.Tensor,
                 bias: torch.Tensor | None) -> ProjectionEdit:
        edit = (refit_columns if self.reconstruct else keep_columns)(weight, stats, kept, bias)
        source = weight.detach().cpu()
        self.plain.append(output_error(source, stats.second_moment, source[:, kept], kept))
        if edit.weight is not None:
            self.refit.append(output_error(source, stats.second_moment, edit.weight, kept))
        return edit

    def metrics(self) -> dict:
        mean = lambda values: round(sum(values) / len(values), 6) if values else None  # noqa: E731
        return {"output_error_plain": mean(self.plain), "output_error_reconstructed": mean(self.refit)}


@register("goa", "Greedy Output Approximation (our reading): greedy head removal on output similarity, "
                 "second-moment MLP channels, least-squares reconstruction, layer by layer", GoaOptions)
def run_goa(ctx: MethodContext, ratio: float, options: GoaOptions) -> MethodResult:
    hd, gs = ctx.base.head_dim, ctx.base.group_size

    def scoring(layer, stats: LayerStatistics, plan: LayerPlan) -> LayerImportance:
        o, down = ctx.adapter.attention_linears(layer).o.weight, ctx.adapter.mlp_linears(layer).down.weight
        return goa_importance(o, down, stats, plan, hd, gs, options.channel_rule)

    log = ReconstructionLog(options.reconstruct)
    result = prune_uniformly(ctx, ratio, options, scoring, log, statistics="full", sequential=options.sequential,
                             notes={"method": "goa"})
    result.metrics.update(log.metrics())
    return result
