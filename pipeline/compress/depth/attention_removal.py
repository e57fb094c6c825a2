"""Removing attention sublayers: the residual passes through, and the layer keeps no KV cache.

- `attn-skip-last` (Tyukin et al. 2024, arXiv 2407.15516, "Attention Is All You Need But You
  Don't Need All Of It"): skip the attention of the last k layers; data-free. The paper also
  tries keeping the very last layer intact (`keep_final`).
- `attn-drop` (He et al. 2024, arXiv 2406.15786, "What Matters in Transformers?", LLM-Drop):
  drop the k attention sublayers whose output stream is most similar to their input stream,
  cos(h_l, h_l + Attn(norm(h_l))) averaged over calibration tokens, measured once on the
  dense model (their one-shot mode).

Attention is about a quarter of a llama block's parameters (25 % in SmolLM2), so these methods
cannot go much below 0.76 of the decoder: lower ratios raise a SculptError naming the floor.
"""

from __future__ import annotations

from pipeline.compress.calibration.stream_similarity import sublayer_similarity
from pipeline.compress.registry import MethodContext, MethodOptions, MethodResult, register
from pipeline.models.spec import decoder_ratio

from .removal_counting import fewest_units_for, spec_without

HINT = "or a method that also removes MLP channels or whole blocks (e.g. shortgpt, uniform)"


def attention_to_skip(ctx: MethodContext, ratio: float, order: list[int], method: str) -> list[int]:
    """The first k layers of `order` whose attention goes, k the fewest that reach `ratio`."""
    count = fewest_units_for(ratio, lambda k: decoder_ratio(spec_without(ctx.base, attention=order[:k])), len(order),
                             method, "attention sublayers", HINT)
    return sorted(order[:count])


class SkipLastOptions(MethodOptions):
    keep_final: bool = False  # leave the very last layer's attention in place (the paper's second variant)


@register("attn-skip-last", "skip the attention sublayers of the last layers (Tyukin et al. 2024); data-free",
          SkipLastOptions)
def run_skip_last(ctx: MethodContext, ratio: float, options: SkipLastOptions) -> MethodResult:
    last = ctx.base.num_layers - (2 if options.keep_final else 1)
    order = list(range(last, -1, -1))  # deepest first
    if not options.keep_final:
        order = order[:-1]  # layer 0 keeps its attention: a causal LM needs at least one
    skipped = attention_to_skip(ctx, ratio, order, "attn-skip-last")
    spec = spec_without(ctx.base, attention=skipped, notes={"method": "attn-skip-last", **options.model_dump()})
    return MethodResult(spec, metrics={"skipped_attention": skipped})


@register("attn-drop", "LLM-Drop: drop the attention sublayers whose input and output streams are most alike")
def run_attention_drop(ctx: MethodContext, ratio: float, options: MethodOptions) -> MethodResult:
    similarity = sublayer_similarity(ctx.model, ctx.adapter, ctx.calibration, ctx.batch_size, ctx.progress)
    scores = similarity.attention
    # Most similar first; one attention sublayer must stay; ties drop the deeper layer.
    order = sorted(range(ctx.base.num_layers), key=lambda l: (-scores[l], -l))[: ctx.base.num_layers - 1]
    skipped = attention_to_skip(ctx, ratio, order, "attn-drop")
    spec = spec_without(ctx.base, attention=skipped, notes={"method": "attn-drop"})
    return MethodResult(spec, metrics={"attention_similarity": [round(s, 6) for s in scores],
                                       "skipped_attention": skipped})
