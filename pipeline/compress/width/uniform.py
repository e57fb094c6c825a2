"""Uniform structured pruning by weight importance: every layer keeps the same shape.

The paper's initialisation (Shen et al. 2024, §3.2) as a method of its own. Every layer
keeps the same attention shape (whole heads, GQA-aware) and MLP width, filled with its
most important heads and channels, `ratio` of the decoder parameters in all.

How a layer's budget splits between attention and MLP is the one free choice:
`proportional` keeps the same fraction of both (the paper's per-module ratio, rounded to
whole heads); `calibrated` (default) tries every legal attention shape, gives the MLP the
rest, and keeps the split with the lowest calibration perplexity. On SmolLM2 dropping even
one query head per GQA group in every layer is ruinous (perplexity 20 -> ~1,300 at 80%),
so the proportional split is a poor default there.
"""

from __future__ import annotations

from typing import Literal

from tqdm.auto import tqdm

from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.importance.obs_importance import LayerImportance, layer_importance
from pipeline.compress.registry import MethodContext, MethodOptions, MethodResult, register
from pipeline.errors import SculptError
from pipeline.models.lazy_weights import is_streamed
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, BaseDims, attention_parameters, mlp_parameters

from .legal_widths import (
    DEFAULT_MLP_MULTIPLE,
    AttentionShape,
    attention_shapes,
    layer_spec,
    nearest_attention_shape,
    spread_widths,
)


class UniformOptions(MethodOptions):
    mlp_multiple: int = DEFAULT_MLP_MULTIPLE  # MLP widths snap to this many channels
    split: Literal["calibrated", "proportional"] = "calibrated"
    fitness_windows: int = 4  # calibration windows scoring each split (calibrated only)


def layer_budget(base: BaseDims, ratio: float) -> float:
    return ratio * (attention_parameters(base, base.num_heads, base.num_kv_heads)
                    + mlp_parameters(base, base.intermediate_size))


def widths_with(base: BaseDims, shape: AttentionShape, ratio: float, mlp_multiple: int,
                layers: int | None = None) -> list[int]:
    """The MLP widths of `layers` layers (default: all) that fill, never overshoot, their budget next to attention
    of `shape`: one snapped width, a multiple wider in evenly spaced layers (legal_widths.spread_widths)."""
    layers = base.num_layers if layers is None else layers
    left = layer_budget(base, ratio) - attention_parameters(base, shape.num_heads, shape.num_kv_heads)
    return spread_widths(base, layers, layers * left, mlp_multiple)


def proportional_shape(base: BaseDims, ratio: float, mlp_multiple: int,
                       layers: int | None = None) -> tuple[AttentionShape, list[int]]:
    """Attention keeps the legal shape nearest to `ratio` of its parameters; the MLPs fill the rest."""
    shape = nearest_attention_shape(base, ratio * attention_parameters(base, base.num_heads, base.num_kv_heads))
    return shape, widths_with(base, shape, ratio, mlp_multiple, layers)


def candidate_shapes(base: BaseDims, ratio: float, mlp_multiple: int) -> list[tuple[AttentionShape, list[int]]]:
    """Every legal attention shape that leaves every MLP a non-empty width within the budget."""
    candidates = []
    for shape in attention_shapes(base):
        widths = widths_with(base, shape, ratio, mlp_multiple)
        if min(widths) > 0:
            candidates.append((shape, widths))
    return candidates


def smallest_ratio(base: BaseDims, mlp_multiple: int) -> float:
    """The lowest ratio a uniform layer can reach: the smallest attention shape and one MLP multiple."""
    smallest = attention_shapes(base)[0]
    floor = (attention_parameters(base, smallest.num_heads, smallest.num_kv_heads)
             + mlp_parameters(base, min(mlp_multiple, base.intermediate_size)))
    return floor / layer_budget(base, 1.0)


def too_small(base: BaseDims, ratio: float, mlp_multiple: int) -> SculptError:
    return SculptError(
        f"ratio {ratio} is too small for the uniform method on this model: every layer keeps at least one KV "
        f"group, one query head and {mlp_multiple} MLP channels, {smallest_ratio(base, mlp_multiple):.3f} of its "
        "parameters; use a larger --ratio, a smaller search.options.mlp_multiple, or a method that removes "
        "whole layers (shortgpt, sleb, streamline)")


def uniform_spec(base: BaseDims, importance: list[LayerImportance], shape: AttentionShape, widths: list[int],
                 notes: dict | None = None) -> ArchSpec:
    """Every layer with attention of `shape` and its MLP width from `widths`, kept units by `importance`."""
    layers = tuple(layer_spec(i, imp, base, shape, width) for i, imp, width in zip(range(len(importance)),
                                                                                  importance, widths))
    return ArchSpec(base, layers, notes=dict(notes or {})).validate()


@register("uniform", "every layer keeps the same width, filled with its most important heads and channels",
          UniformOptions)
def run_uniform(ctx: MethodContext, ratio: float, options: UniformOptions) -> MethodResult:
    # The shapes depend only on the ratio and the model's dimensions: reject an impossible ratio before the
    # importance pass (66 s on SmolLM2 on this 2-core CPU) rather than after it.
    if options.split == "proportional":
        shape, widths = proportional_shape(ctx.base, ratio, options.mlp_multiple)
        candidates = [(shape, widths)] if min(widths) > 0 else []
    else:
        candidates = candidate_shapes(ctx.base, ratio, options.mlp_multiple)
    if not candidates:
        raise too_small(ctx.base, ratio, options.mlp_multiple)
    if is_streamed(ctx.model):  # weights on disk: one layer at a time, statistics freed as used
        if options.split != "proportional":
            raise SculptError(
                "the uniform method's calibrated split scores every attention shape on a whole sliced model, which "
                "a source streamed from disk (a model larger than a quarter of memory) cannot hold: set "
                "search.options.split: proportional, or load the model in memory (SCULPT_STREAM_WEIGHTS=never)")
    importance = layer_importance(ctx.model, ctx.adapter, ctx.calibration, ctx.batch_size, ctx.progress)
    notes = {"method": "uniform", "split": options.split, "mlp_multiple": options.mlp_multiple}
    if options.split == "proportional":
        return MethodResult(spec=uniform_spec(ctx.base, importance, *candidates[0], notes))
    windows = ctx.calibration[: options.fitness_windows]
    tried = {}
    for shape, widths in tqdm(candidates, desc="uniform split", unit="shape", disable=not ctx.progress):
        spec = uniform_spec(ctx.base, importance, shape, widths, notes)
        tried[shape] = (calibration_perplexity(slice_model(ctx.model, spec), windows, ctx.batch_size), spec, widths)
    shape, (ppl, spec, widths) = min(tried.items(), key=lambda item: item[1][0])
    metrics = {"split_heads": shape.num_heads, "split_kv_heads": shape.num_kv_heads,
               "split_mlp_widths": sorted(set(widths)), "split_calibration_ppl": ppl,
               "splits_tried": {f"{s.num_kv_heads}x{s.per_group}+{min(w)}": round(p, 4)
                                for s, (p, _, w) in tried.items()}}
    return MethodResult(spec=spec, metrics=metrics)
