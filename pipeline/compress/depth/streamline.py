"""LLM-Streamline (Chen et al. 2024, arXiv 2403.19135): replace the most redundant span of blocks by one light layer.

1. Span: of every run of n consecutive blocks, the one whose input and output streams are most
   alike (mean per-token cosine of h_j and h_{j+n} over the calibration windows).
2. Replacement: one layer at the span's position (source = its first block, whose MLP norm it
   keeps) with attention skipped and either a `linear` d x d map (closed-form least squares) or
   an `ffn` (the family's gated MLP, initialised from the first block's highest-energy channels
   and trained with AdamW) fitted to map h_j to h_{j+n} on the cached calibration streams.
   See `replacement` for the fitting.
3. n: the fewest blocks whose removal, counting the replacement's parameters, reaches the ratio.
4. Stability (the paper's metric, stability.py): whether the pruned model is right where the dense
   one is, on next-token choices of the held-out windows, weighted by the dense model's decidedness.

The replacement's weights travel in `MethodResult.weights` under the sliced model's names, so
slice and export treat it like any layer. The last `held_out_windows` calibration windows are
held out: the replacement is fitted on the others and its error and stability are reported on them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pipeline.compress.calibration.stream_similarity import most_similar_span
from pipeline.compress.registry import (
    MethodContext,
    MethodOptions,
    MethodResult,
    register,
)
from pipeline.compress.width.legal_widths import top_units
from pipeline.errors import SculptError
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, decoder_ratio

from .removal_counting import dense_layer, fewest_units_for, spec_without
from .replacement_fit import (
    LINEAR_DAMPING,
    channel_scores,
    fit_linear,
    relative_error,
    tokens_of,
    train_layer,
)
from .stability import next_token_stability


class StreamlineOptions(MethodOptions):
    replacement: Literal["linear", "ffn"] = "ffn"
    ffn_width: int | None = Field(None, ge=1)  # channels of the ffn replacement; None = the source MLP width
    epochs: int = Field(20, ge=0)  # ffn training epochs over the cached tokens
    lr: float = Field(1e-3, gt=0)  # ffn peak learning rate (AdamW, cosine decay)
    batch_tokens: int = Field(512, ge=1)  # tokens per ffn training step
    held_out_windows: int = Field(4, ge=1)  # calibration windows kept out of fitting, to measure the error
    stability_options: int = Field(4, ge=2)  # choices per next-token item of the stability metric (stability.py)
    damping: float = Field(LINEAR_DAMPING, ge=0)  # ridge of the linear least-squares fit


def replacement_layer(ctx: MethodContext, start: int, options: StreamlineOptions, channels=None):
    """The LayerSpec that stands in for the span starting at `start`."""
    if options.replacement == "linear":
        return dense_layer(ctx.base, start, attention="skip", mlp="linear")
    width = len(channels) if channels is not None else (options.ffn_width or ctx.base.intermediate_size)
    return dense_layer(ctx.base, start, attention="skip", intermediate_size=width,
                       mlp_channels=tuple(channels) if channels is not None else tuple(range(width)))


def streamline_spec(ctx: MethodContext, start: int, length: int, layer) -> ArchSpec:
    return spec_without(ctx.base, layers=range(start + 1, start + length), replace={start: layer},
                        notes={"method": "streamline"})


def span_length(ctx: MethodContext, ratio: float, options: StreamlineOptions) -> int:
    def ratio_after(n: int) -> float:
        if n == 0:
            return 1.0
        return decoder_ratio(streamline_spec(ctx, 0, n, replacement_layer(ctx, 0, options)))

    return fewest_units_for(ratio, ratio_after, ctx.base.num_layers - 1, f"streamline ({options.replacement})",
                            "blocks", "or a smaller replacement (replacement=linear, a lower ffn_width)")


@register("streamline", "LLM-Streamline: replace the most redundant span of blocks by one trained linear/FFN layer",
          StreamlineOptions)
def run_streamline(ctx: MethodContext, ratio: float, options: StreamlineOptions) -> MethodResult:
    if options.ffn_width is not None and options.ffn_width > ctx.base.intermediate_size:
        raise SculptError(f"streamline: ffn_width {options.ffn_width} exceeds the source MLP width "
                          f"{ctx.base.intermediate_size}; pass a smaller ffn_width")
    if options.held_out_windows >= ctx.calibration.shape[0]:
        raise SculptError(f"streamline holds out {options.held_out_windows} calibration windows to measure the "
                          f"replacement but there are only {ctx.calibration.shape[0]}: raise --calib-samples")
    if options.stability_options > ctx.base.vocab_size:
        raise SculptError(f"streamline: stability_options {options.stability_options} exceeds the vocabulary "
                          f"({ctx.base.vocab_size} tokens); pass a smaller stability_options")
    length = span_length(ctx, ratio, options)
    if length == 0:
        return MethodResult(spec_without(ctx.base, notes={"method": "streamline"}), metrics={"span_length": 0})
    span = most_similar_span(ctx.model, ctx.adapter, ctx.calibration, length, ctx.batch_size, ctx.progress)
    start, similarities = span.start, span.similarities
    inputs, targets = tokens_of(span.inputs), tokens_of(span.outputs)
    del span  # the token copies above are all that is needed of the streams
    split = (ctx.calibration.shape[0] - options.held_out_windows) * ctx.calibration.shape[1]
    train, held_out = (inputs[:split], targets[:split]), (inputs[split:], targets[split:])

    channels = None
    if options.replacement == "ffn":
        source = ctx.adapter.layers(ctx.model)[start]
        scores = channel_scores(ctx.adapter.mlp_norm(source), ctx.adapter.mlp(source),
                                ctx.adapter.mlp_linears(source).down, train[0])
        channels = top_units(scores, options.ffn_width or ctx.base.intermediate_size)
    spec = streamline_spec(ctx, start, length, replacement_layer(ctx, start, options, channels))
    pruned = slice_model(ctx.model, spec)
    layer = ctx.adapter.layers(pruned)[start]  # the sliced layer, initialised from source
    metrics = {"span_start": start, "span_length": length, "span_end": start + length - 1,
               "span_similarity": round(similarities[start], 6),
               "span_similarities": [round(s, 6) for s in similarities], "replacement": options.replacement,
               "fit_tokens": int(train[0].shape[0]), "held_out_tokens": int(held_out[0].shape[0])}
    if options.replacement == "linear":
        fit_linear(ctx.adapter.mlp_norm(layer), ctx.adapter.mlp(layer).proj, *train, options.damping)
    else:
        torch.manual_seed(ctx.seed)
        metrics["training"] = train_layer(layer, train, held_out, options.epochs, options.lr, options.batch_tokens,
                                          ctx.seed, ctx.progress)
    layer.requires_grad_(False)
    metrics.update(fit_relative_error=relative_error(layer, *train),
                   held_out_relative_error=relative_error(layer, *held_out))
    # The paper's stability of the pruned model against the dense one, on the held-out windows' next tokens.
    held_out_windows = ctx.calibration[-options.held_out_windows:]
    metrics.update(next_token_stability(ctx.model, pruned.eval(), held_out_windows, options.stability_options).metrics())
    weights = {f"{ctx.adapter.layer_prefix(start)}.{name}": tensor.detach().clone()
               for name, tensor in layer.state_dict().items()}
    return MethodResult(spec, weights=weights, metrics=metrics)
