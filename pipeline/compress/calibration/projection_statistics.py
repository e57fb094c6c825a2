"""Statistics of the inputs of every layer's output projections, from one streamed pass.

Width methods score and correct the two output projections of a block: the attention output
projection (its input is the concatenated head outputs) and the MLP down projection (its input is the
gated MLP activation).
All they need of the data is the mean, the per-channel second moment and, for least
squares and correlations, the full second moment E[x x^T] of those inputs.

The pass can be *sequential*: a callback sees each layer's statistics before the next
layer runs and may return an edit (kept columns, refit weights, output bias); the edited
layer's output then feeds the next layer, so later layers are scored and corrected on
the inputs the pruned model will really give them (the SparseGPT/Wanda scheme).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.models.adapters import FamilyAdapter

from .layer_stream import GramAccumulator, LayerStream, gram_of_inputs


@dataclass(frozen=True)
class InputStatistics:
    """Moments of one linear layer's input over calibration tokens (float64, CPU)."""

    square_mean: torch.Tensor  # E[x_j^2], shape (in,)
    mean: torch.Tensor  # E[x_j], shape (in,)
    second_moment: torch.Tensor | None = None  # E[x x^T], shape (in, in), when gathered in full

    @property
    def variance(self) -> torch.Tensor:
        return (self.square_mean - self.mean.pow(2)).clamp_min(0)

    @classmethod
    def from_accumulator(cls, acc: GramAccumulator) -> "InputStatistics":
        return cls(acc.square_mean().cpu(), acc.input_mean().cpu(), acc.mean().cpu() if acc.full else None)

    @classmethod
    def from_samples(cls, x: torch.Tensor, full: bool = True) -> "InputStatistics":
        """From explicit input rows (tokens x channels): for tests and small experiments."""
        acc = GramAccumulator(full)
        acc.add(x)
        return cls.from_accumulator(acc)


@dataclass(frozen=True)
class LayerStatistics:
    attention: InputStatistics  # input of the attention output projection
    mlp: InputStatistics  # input of the MLP down projection


@dataclass(frozen=True)
class ProjectionEdit:
    """A pruned output projection: the input columns kept (source indices, in sliced order),
    optionally new weights for them (out x len(kept)) and the projection's whole output bias
    (the source's own bias included, if it has one)."""

    kept: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@dataclass(frozen=True)
class LayerEdit:
    attention: ProjectionEdit
    mlp: ProjectionEdit


LayerCallback = Callable[[int, nn.Module, LayerStatistics], "LayerEdit | None"]


@torch.no_grad()
def stream_statistics(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, on_layer: LayerCallback,
                      full: bool = False, batch_size: int = 1, progress: bool = True,
                      desc: str = "statistics") -> None:
    """Run the calibration windows through the decoder once, calling `on_layer` per layer.

    `full` gathers E[x x^T] (needed for least squares); otherwise only per-channel moments.
    When `on_layer` returns an edit, the edited layer's outputs feed the next layer.
    """
    stream = LayerStream(model, adapter, windows, batch_size)
    for index, layer in enumerate(tqdm(adapter.layers(model), desc=desc, unit="layer", disable=not progress)):
        projections = {"attention": adapter.attention_linears(layer).o, "mlp": adapter.mlp_linears(layer).down}
        with gram_of_inputs(projections, full) as moments:
            outputs = stream.run(layer)
        stats = LayerStatistics(*(InputStatistics.from_accumulator(moments[name]) for name in projections))
        edit = on_layer(index, layer, stats)
        if edit is not None:
            outputs = stream.run(edited_layer(layer, adapter, edit))
        stream.advance(outputs)


@torch.no_grad()
def edited_layer(layer: nn.Module, adapter: FamilyAdapter, edit: LayerEdit) -> nn.Module:
    """A copy of `layer` computing what the sliced layer computes: removed input columns of
    output projections zeroed (the reference masking semantics), kept ones replaced, biases added."""
    layer = copy.deepcopy(layer)
    for linear, change in ((adapter.attention_linears(layer).o, edit.attention), (adapter.mlp_linears(layer).down, edit.mlp)):
        apply_projection_edit(linear, change)
    return layer


def apply_projection_edit(linear: nn.Linear, edit: ProjectionEdit) -> None:
    """Mask, refit and bias `linear` in place as `edit` says (a masked stand-in for slicing)."""
    weight = linear.weight
    kept = edit.kept.to(weight.device)
    new = torch.zeros_like(weight)
    new[:, kept] = weight[:, kept] if edit.weight is None else edit.weight.to(weight)
    weight.copy_(new)
    if edit.bias is None:
        if kept.numel() == 0 and linear.bias is not None:
            linear.bias.zero_()  # a skipped sublayer adds nothing, its bias included
        return
    if linear.bias is not None:
        linear.bias.copy_(edit.bias.to(linear.bias))
    else:
        linear.bias = nn.Parameter(edit.bias.to(weight), requires_grad=False)
