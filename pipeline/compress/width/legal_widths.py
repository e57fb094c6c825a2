"""Choosing legal, hardware-friendly widths and the units that fill them.

Attention is cut in whole heads, GQA-aware: either whole KV groups go, or the same
number of query heads goes from every kept group, so query head j of the sliced layer
still reads KV head j // per_group. MLP widths snap to a multiple (64 by default):
odd widths are what makes pruned models slower than dense on real GEMM kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.models.spec import BaseDims, LayerSpec, attention_parameters, mlp_parameters

DEFAULT_MLP_MULTIPLE = 64


@dataclass(frozen=True, order=True)
class AttentionShape:
    num_kv_heads: int
    per_group: int

    @property
    def num_heads(self) -> int:
        return self.num_kv_heads * self.per_group


def attention_shapes(base: BaseDims) -> list[AttentionShape]:
    """Every legal GQA-preserving attention shape, smallest first."""
    shapes = [AttentionShape(g, p) for g in range(1, base.num_kv_heads + 1) for p in range(1, base.group_size + 1)]
    return sorted(shapes, key=lambda s: (attention_parameters(base, s.num_heads, s.num_kv_heads), s))


def nearest_attention_shape(base: BaseDims, target_params: float) -> AttentionShape:
    return min(attention_shapes(base), key=lambda s: (abs(attention_parameters(base, s.num_heads, s.num_kv_heads)
                                                          - target_params), -s.num_heads))


def snap_width(width: float, multiple: int, maximum: int) -> int:
    """Round to the nearest multiple (never above `maximum`; the full width is always allowed)."""
    if width >= maximum:
        return maximum
    snapped = int(round(width / multiple)) * multiple
    return max(0, min(snapped, maximum))


def spread_widths(base: BaseDims, layers: int, allowance: float, multiple: int) -> list[int]:
    """MLP widths for `layers` layers whose MLPs may hold `allowance` parameters in all, never more: every layer
    the widest snapped width that fits, then one more multiple in as many evenly spaced layers as the rest pays
    for. `--ratio` is a cap for every method, so methods compare at (nearly) the same kept parameters."""
    per_channel = mlp_parameters(base, 1) - mlp_parameters(base, 0)
    room = (allowance / layers - mlp_parameters(base, 0)) / per_channel
    width = min(int(room // multiple) * multiple, base.intermediate_size) if room >= 0 else 0
    wider = min(width + multiple, base.intermediate_size)
    step = mlp_parameters(base, wider) - mlp_parameters(base, width)
    left = allowance - layers * mlp_parameters(base, width)
    extra = min(layers, int(left // step)) if step > 0 and left > 0 else 0
    chosen = {int((i + 0.5) * layers / extra) for i in range(extra)}
    return [wider if i in chosen else width for i in range(layers)]


def top_units(scores: torch.Tensor, count: int) -> tuple[int, ...]:
    """Indices of the `count` highest scores, in ascending index order (keeps the source layout)."""
    if count >= scores.numel():
        return tuple(range(scores.numel()))
    return tuple(sorted(torch.topk(scores, count).indices.tolist()))


def keep_heads(importance: LayerImportance, base: BaseDims, shape: AttentionShape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The best KV groups, then the best `per_group` query heads inside each: (q_heads, kv_heads)."""
    kv_heads = top_units(importance.kv_groups, shape.num_kv_heads)
    q_heads: list[int] = []
    for group in kv_heads:
        members = torch.arange(group * base.group_size, (group + 1) * base.group_size)
        best = top_units(importance.q_heads[members], shape.per_group)
        q_heads.extend(int(members[i]) for i in best)
    return tuple(q_heads), kv_heads


def layer_spec(source: int, importance: LayerImportance, base: BaseDims,
               shape: AttentionShape | None, width: int) -> LayerSpec:
    """A layer keeping the most important units: `shape` None skips attention, width 0 skips the MLP."""
    fields: dict = {"source": source}
    if shape is None:
        fields["attention"] = "skip"
    else:
        q_heads, kv_heads = keep_heads(importance, base, shape)
        fields.update(num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads, q_heads=q_heads, kv_heads=kv_heads)
    if width <= 0:
        fields["mlp"] = "skip"
    else:
        fields.update(intermediate_size=width, mlp_channels=top_units(importance.mlp_channels, width))
    return LayerSpec(**fields)
