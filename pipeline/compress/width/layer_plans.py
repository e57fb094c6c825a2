"""How much of each layer a width method keeps: uniform per layer, or global across layers.

Uniform (LLM-Pruner, Wanda-sp, FLAP UL-UM, GOA): every pruned layer keeps the same fraction
of each module, rounded to a legal GQA attention shape and a snapped MLP width (the
`proportional` split of the uniform method), or a fixed fraction of attention with the MLP
filling the rest (`attention_ratio`; 1.0 keeps attention whole). Global (FLAP AL-AM): the units of every layer
are ranked together by a standardised score, each costing its parameter count, and the best
are kept until the budget is spent; a layer may lose every KV group or channel. Pure math.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import SculptError
from pipeline.models.spec import BaseDims, attention_parameters, dense_decoder_parameters, mlp_parameters

from .legal_widths import AttentionShape, nearest_attention_shape, snap_width
from .uniform import layer_budget, proportional_shape, widths_with


@dataclass(frozen=True)
class LayerPlan:
    """What one layer keeps: an attention shape (None = attention skipped) and an MLP width (0 = skipped)."""

    shape: AttentionShape | None
    width: int

    @classmethod
    def dense(cls, base: BaseDims) -> "LayerPlan":
        return cls(AttentionShape(base.num_kv_heads, base.group_size), base.intermediate_size)


def plan_parameters(base: BaseDims, plan: LayerPlan, out_bias: bool = False) -> int:
    """Decoder parameters of a layer with this plan; `out_bias` adds a bias to each module that lost units."""
    total = 0
    if plan.shape is not None:
        pruned = plan.shape != LayerPlan.dense(base).shape
        total += attention_parameters(base, plan.shape.num_heads, plan.shape.num_kv_heads, out_bias and pruned)
    if plan.width > 0:
        total += mlp_parameters(base, plan.width, out_bias and plan.width < base.intermediate_size)
    return total


def uniform_plan(base: BaseDims, ratio: float, mlp_multiple: int, keep_first: int = 0, keep_last: int = 0,
                 attention_ratio: float | None = None) -> list[LayerPlan]:
    """The same shape in every pruned layer; the first/last layers named stay dense, the rest make up the ratio.

    Attention keeps the legal shape nearest to `attention_ratio` of its parameters (None: the
    layer's own ratio, the papers' per-module split); the MLP width fills the rest of the budget.
    """
    pruned = base.num_layers - keep_first - keep_last
    if keep_first < 0 or keep_last < 0 or pruned < 1:
        raise SculptError(f"keep_first={keep_first} and keep_last={keep_last} leave no layer of "
                          f"{base.num_layers} to prune; lower them")
    dense_layer = layer_budget(base, 1.0)
    per_layer = (ratio * dense_decoder_parameters(base) - (base.num_layers - pruned) * dense_layer) / (pruned * dense_layer)
    if per_layer <= 0:
        raise SculptError(f"ratio {ratio} cannot be met with {keep_first + keep_last} dense layers; "
                          "lower keep_first/keep_last or raise the ratio")
    per_layer = min(per_layer, 1.0)
    if attention_ratio is None:
        shape, widths = proportional_shape(base, per_layer, mlp_multiple, pruned)
    else:
        shape = nearest_attention_shape(base, attention_ratio * attention_parameters(base, base.num_heads,
                                                                                     base.num_kv_heads))
        widths = widths_with(base, shape, per_layer, mlp_multiple, pruned)
        if min(widths) <= 0:
            raise SculptError(f"attention_ratio {attention_ratio} leaves the MLP nothing at ratio {ratio}; "
                              "lower attention_ratio or raise the ratio")
    plans = [LayerPlan.dense(base)] * base.num_layers
    return plans[:keep_first] + [LayerPlan(shape, width) for width in widths] + plans[base.num_layers - keep_last:]


def global_plan(base: BaseDims, ratio: float, group_scores: list[torch.Tensor], channel_scores: list[torch.Tensor],
                mlp_multiple: int, out_bias: bool = False) -> list[LayerPlan]:
    """Keep the highest-scoring KV groups and MLP channels of all layers within `ratio` of the decoder parameters.

    Units are kept in score order; each layer's kept channel count snaps to `mlp_multiple`.
    The cut point is the last whose total parameters (after snapping, biases included) stay within
    the budget (`--ratio` is a cap for every method); the total only grows as units are added, so
    bisection finds it.
    """
    layers = len(group_scores)
    scores = torch.cat([*group_scores, *channel_scores]).double()
    layer_of = torch.cat([torch.full((len(s),), i) for kind in (group_scores, channel_scores)
                          for i, s in enumerate(kind)])
    is_group = torch.cat([torch.ones(sum(len(s) for s in group_scores), dtype=torch.bool),
                          torch.zeros(sum(len(s) for s in channel_scores), dtype=torch.bool)])
    order = torch.argsort(scores, descending=True, stable=True)

    def plans(count: int) -> list[LayerPlan]:
        top = order[:count]
        groups = torch.bincount(layer_of[top][is_group[top]], minlength=layers).tolist()
        channels = torch.bincount(layer_of[top][~is_group[top]], minlength=layers).tolist()
        return [LayerPlan(AttentionShape(g, base.group_size) if g else None,
                          snap_width(c, mlp_multiple, base.intermediate_size)) for g, c in zip(groups, channels)]

    def total(count: int) -> int:
        return sum(plan_parameters(base, plan, out_bias) for plan in plans(count))

    budget = ratio * dense_decoder_parameters(base)
    low, high = 0, len(order)  # the largest count whose total stays within the budget
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if total(middle) <= budget else (low, middle - 1)
    return plans(low)
