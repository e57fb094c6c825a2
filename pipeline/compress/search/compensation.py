"""Bias compensation of search candidates: FLAP's bias, for every architecture the search scores.

An output projection (o_proj, down_proj) that lost input columns gets a bias carrying their mean contribution,
W[:, removed] E[x_removed], from the dense model's input means that the importance pass gathers anyway. It is
nearly free (one matrix-vector product per pruned projection) and worth much before any reform: on SmolLM2 at
0.8, FLAP's own structure scores 41.65 on the search's fitness windows without its bias and 34.05 with it, the
evolved parent without one 36.27 (docs/search.md). The reform stage refits such a bias jointly with the kept
columns (sequential_reform.py), so a candidate is judged closer to how it will ship. Measured at 0.8 the
compensated search's pick was no better on the test text than the uncompensated one's, so it is an option, off.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.compress.reform.projection_corrections import compensation_bias
from pipeline.compress.reform.sequential_reform import pruned_inputs
from pipeline.models.adapters import ATTENTION_OUTPUT, MLP_OUTPUT, FamilyAdapter
from pipeline.models.lazy_weights import materialised
from pipeline.models.spec import ArchSpec

InputMeans = list[dict[str, torch.Tensor]]  # per source layer, {output projection role: mean of its dense input}


def layer_biases(adapter: FamilyAdapter, model: nn.Module, spec: ArchSpec, position: int,
                 means: InputMeans) -> dict[str, torch.Tensor]:
    """{role: compensated output bias (the source's own included)} of layer `position` of `spec` cut from `model`,
    for each of its projections that carries an output bias and lost inputs."""
    layer = spec.layers[position]
    source_layer = adapter.layers(model)[layer.source]
    carried = {ATTENTION_OUTPUT: layer.attention_out_bias, MLP_OUTPUT: layer.mlp_out_bias}
    biases = {}
    with materialised(model, [source_layer]):  # a streamed source's layer is read for it
        for role, kept in pruned_inputs(layer, spec).items():
            if not carried[role]:
                continue
            linear = adapter.output_projection(source_layer, role)
            bias = compensation_bias(linear.weight.detach().cpu(), means[layer.source][role].cpu(), kept)
            if linear.bias is not None:
                bias = bias + linear.bias.detach().cpu().double()
            biases[role] = bias.to(linear.weight)
    return biases


def compensate_layer(adapter: FamilyAdapter, sliced: nn.Module, model: nn.Module, spec: ArchSpec, position: int,
                     means: InputMeans) -> None:
    """Set the output biases of `sliced` (layer `position` of `spec`, sliced alone) to their compensation."""
    for role, bias in layer_biases(adapter, model, spec, position, means).items():
        adapter.output_projection(sliced, role).bias.data.copy_(bias)


def compensation_weights(model: nn.Module, adapter: FamilyAdapter, spec: ArchSpec,
                         means: InputMeans) -> dict[str, torch.Tensor]:
    """The compensated output biases of every layer of `spec`, named as in the sliced model."""
    weights = {}
    for position in range(len(spec.layers)):
        for role, bias in layer_biases(adapter, model, spec, position, means).items():
            weights[f"{adapter.output_projection_name(position, role)}.bias"] = bias.contiguous()
    return weights
