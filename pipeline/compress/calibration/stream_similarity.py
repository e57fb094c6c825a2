"""How much a layer, a sublayer or a span of layers changes the residual stream, from calibration windows.

The redundancy measure that ShortGPT (Block Influence), LLM-Drop (attention drop) and
LLM-Streamline (span selection) all rank by: the mean over calibration tokens of the cosine
between the residual stream entering a unit and the stream leaving it (1 = the unit does
nothing but rescale). For a llama block l, with h_l entering it:

    u_l     = h_l + Attn(norm(h_l))          (attention sublayer: cos(h_l, u_l))
    h_{l+1} = u_l + MLP(norm(u_l))           (MLP sublayer: cos(u_l, h_{l+1}); block: cos(h_l, h_{l+1}))
    span of n blocks from j:                  cos(h_j, h_{j+n})

The streams are the raw residuals (the last one before the final norm, unlike Hugging Face's
`hidden_states[-1]`), computed one layer at a time with `LayerStream`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from pipeline.models.adapters import FamilyAdapter

from .layer_stream import LayerStream, capture_inputs


# ---- pure math ---------------------------------------------------------------
def cosine_sum(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, int]:
    """Sum over every token of cos(a_t, b_t) (float64), and the token count; a and b are batches [.., T, d]."""
    total, count = 0.0, 0
    for x, y in zip(a, b, strict=True):
        x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        total += float(torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-12).sum())
        count += x.shape[0]
    return total, count


def mean_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean per-token cosine similarity of two lists of hidden-state batches (equal-length windows, so
    the mean over tokens equals the papers' mean over windows of the mean over tokens)."""
    total, count = cosine_sum(a, b)
    return total / max(count, 1)


# ---- streaming the calibration windows ---------------------------------------
@dataclass(frozen=True)
class LayerPass:
    """One block's residual streams for every calibration batch."""

    index: int
    inputs: list[torch.Tensor]  # h_l
    middle: list[torch.Tensor]  # u_l = h_l + attention output (the MLP norm's input)
    outputs: list[torch.Tensor]  # h_{l+1}


def layer_passes(model, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int = 1,
                 progress: bool = True, desc: str = "similarity") -> Iterator[LayerPass]:
    """Run the dense model block by block over `windows`, yielding each block's streams."""
    stream = LayerStream(model, adapter, windows, batch_size)
    for index, layer in enumerate(tqdm(adapter.layers(model), desc=desc, unit="layer", disable=not progress)):
        middle: list[torch.Tensor] = []
        with capture_inputs({"mlp_norm": adapter.mlp_norm(layer)}, lambda _name, x: middle.append(x)):
            outputs = stream.run(layer)
        yield LayerPass(index, stream.hidden, middle, outputs)
        stream.advance(outputs)


@dataclass(frozen=True)
class SublayerSimilarity:
    """Mean input/output cosine of every block and sublayer (index = source layer)."""

    attention: tuple[float, ...]
    mlp: tuple[float, ...]
    block: tuple[float, ...]

    @property
    def block_influence(self) -> tuple[float, ...]:
        """ShortGPT's BI = 1 - cos(block input, block output); low BI = redundant block."""
        return tuple(1 - s for s in self.block)


def sublayer_similarity(model, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int = 1,
                        progress: bool = True) -> SublayerSimilarity:
    attention, mlp, block = [], [], []
    for step in layer_passes(model, adapter, windows, batch_size, progress):
        attention.append(mean_cosine(step.inputs, step.middle))
        mlp.append(mean_cosine(step.middle, step.outputs))
        block.append(mean_cosine(step.inputs, step.outputs))
    return SublayerSimilarity(tuple(attention), tuple(mlp), tuple(block))


@dataclass(frozen=True)
class SpanChoice:
    """The span of `length` consecutive blocks whose input and output streams are most alike."""

    start: int
    length: int
    similarities: tuple[float, ...]  # cos(h_j, h_{j+length}) for every start j
    inputs: list[torch.Tensor]  # h_start for every calibration batch
    outputs: list[torch.Tensor]  # h_{start+length}


def most_similar_span(model, adapter: FamilyAdapter, windows: torch.Tensor, length: int, batch_size: int = 1,
                      progress: bool = True) -> SpanChoice:
    """Score every span of `length` blocks in one pass, keeping only the best span's streams
    (plus the last `length` boundaries), so memory stays at length + 2 residual streams."""
    recent: deque[list[torch.Tensor]] = deque(maxlen=length)  # h_{l-length+1} .. h_l
    similarities: list[float] = []
    best: tuple[float, int, list[torch.Tensor], list[torch.Tensor]] | None = None
    for step in layer_passes(model, adapter, windows, batch_size, progress, desc="span similarity"):
        recent.append(step.inputs)
        if len(recent) == length:  # the span step.index-length+1 .. step.index ends here
            start = step.index - length + 1
            score = mean_cosine(recent[0], step.outputs)
            similarities.append(score)
            if best is None or score > best[0]:
                best = (score, start, recent[0], step.outputs)
    if best is None:
        raise ValueError(f"a span of {length} blocks does not fit in {len(adapter.layers(model))} layers")
    _, start, inputs, outputs = best
    return SpanChoice(start, length, tuple(similarities), inputs, outputs)
