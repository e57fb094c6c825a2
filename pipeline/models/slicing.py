"""Physical slicing: build the smaller sculpted model from a dense source and an ArchSpec.

`mask_weights` is the reference semantics: the same cut expressed as zeroed
weights in the dense model. Slicing must compute exactly what masking computes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import SculptError
from .adapters import ATTENTION_OUTPUT, MLP_OUTPUT, FamilyAdapter, adapter_for
from .configuration_sculpted import SculptedConfig
from .lazy_weights import is_streamed, lazy_weights, materialised
from .modeling_sculpted import SculptedDecoderLayer, SculptedForCausalLM
from .spec import ArchSpec, LayerSpec


def sculpted_config(source_config, spec: ArchSpec) -> SculptedConfig:
    """The config of the model that `spec` cuts out of a source with `source_config`."""
    base = {k: v for k, v in source_config.to_dict().items()}
    base["head_dim"] = spec.base.head_dim  # explicit: hidden/heads no longer holds once heads are cut
    config = SculptedConfig(
        base_model_type=spec.base.model_type,
        base_config=base,
        sculpt_layers=[layer.to_dict(with_indices=False) for layer in spec.layers],
    )
    config.architectures = ["SculptedForCausalLM"]
    return config


def head_rows(heads: tuple[int, ...], head_dim: int) -> torch.Tensor:
    """Row indices of the given heads in a projection whose output is heads x head_dim."""
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def slice_model(source: nn.Module, spec: ArchSpec) -> SculptedForCausalLM:
    """A physically smaller copy of `source` holding only what `spec` keeps."""
    spec.validate()
    if not spec.has_indices:
        raise SculptError("the spec has no keep-indices for some kept sublayer; it cannot be sliced from a source model")
    if is_streamed(source):
        raise SculptError("this source model is streamed from disk (larger than a quarter of memory): a whole sliced "
                          "copy would not fit either; this step has no streaming path yet (the slice and reform "
                          "stages and the uniform method's proportional split have one, docs/scale.md), or load the "
                          "model in memory with SCULPT_STREAM_WEIGHTS=never")
    # weights in the source's dtype, RoPE tables in float32 as from_pretrained makes them (`.to(dtype)` would
    # round them to bf16, and a bf16 sculpted model would compute other positions than its reloaded checkpoint)
    target = SculptedForCausalLM._from_config(sculpted_config(source.config, spec), dtype=source_dtype(source))
    state = {}
    for _, tensors in sliced_pieces(source, spec):
        state.update(tensors)
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and spec.base.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"slicing produced a mismatched state dict: missing {missing}, unexpected {unexpected}")
    if spec.base.tie_word_embeddings:
        target.tie_weights()
    return target.eval()


def source_dtype(source: nn.Module) -> torch.dtype:
    """The dtype the source's weights are held in (a streamed one: the dtype its layers are read in)."""
    lazy = lazy_weights(source)
    return lazy.dtype if lazy is not None else adapter_for(source.config).embed_tokens(source).weight.dtype


@torch.no_grad()
def sliced_pieces(source: nn.Module, spec: ArchSpec) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """The tensors of `slice_model(source, spec)` piece by piece, named as in SculptedForCausalLM: ("embed", the
    embeddings), ("head", the final norm and the untied head), then (the layer's prefix, its tensors) per layer.

    Each piece is a fresh copy; a streamed source has only the modules of the piece in memory while it is made,
    so a caller that writes each piece and drops it never holds more than one layer."""
    adapter = adapter_for(source.config)
    embed = adapter.embed_tokens(source)
    with materialised(source, [embed]):
        yield "embed", {"model.embed_tokens.weight": embed.weight.detach().clone()}
    head = [adapter.final_norm(source)] + ([] if spec.base.tie_word_embeddings else [adapter.lm_head(source)])
    with materialised(source, head):
        tensors = {"model.norm.weight": head[0].weight.detach().clone()}
        if not spec.base.tie_word_embeddings:
            tensors["lm_head.weight"] = head[1].weight.detach().clone()
        yield "head", tensors
    source_layers = adapter.layers(source)
    for pos, layer in enumerate(spec.layers):
        prefix = adapter.layer_prefix(pos)
        with materialised(source, [source_layers[layer.source]]):
            state = _layer_state(adapter, source_layers[layer.source], layer, spec)
        yield prefix, {f"{prefix}.{name}": tensor for name, tensor in state.items()}


@torch.no_grad()
def slice_layer(source: nn.Module, spec: ArchSpec, position: int, config: SculptedConfig | None = None) -> nn.Module:
    """Layer `position` of `slice_model(source, spec)`, built alone: a search that scores many
    candidates layer by layer slices only the layers it runs. `config`: `sculpted_config(...)`, if at hand."""
    adapter = adapter_for(source.config)
    if config is None:
        config = sculpted_config(source.config, spec)
    config._attn_implementation = source.config._attn_implementation  # a bare config would fall back to eager
    layer = spec.layers[position]
    with torch.device("meta"):  # no random init: every tensor comes from the source
        module = SculptedDecoderLayer(config, position)
    src = adapter.layers(source)[layer.source]
    with materialised(source, [src]):  # a streamed source's layer is read for the copy
        state = _layer_state(adapter, src, layer, spec)
    module.load_state_dict(state, assign=True)
    return module.eval()


def _layer_state(adapter: FamilyAdapter, src: nn.Module, layer: LayerSpec, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """The sliced tensors of one layer, named as in SculptedDecoderLayer (the family's own names).

    A fused projection (phi3's qkv_proj, gate_up_proj) is sliced part by part through views of its
    weight and stays fused: the kept rows of each part, stacked in the family's order.
    A linear replacement and an output bias the source lacks start at zero: they add
    nothing until a method or the reform stage fits them.
    """
    family = adapter.family
    hd, hidden = spec.base.head_dim, spec.base.hidden_size
    dtype = adapter.attention_norm(src).weight.dtype
    pre_attention, post_attention, pre_mlp, post_mlp = family.norms
    attention, mlp = family.attention, family.mlp
    state: dict[str, torch.Tensor] = {}
    if layer.attention != "skip":
        state[f"{pre_attention}.weight"] = adapter.attention_norm(src).weight
    if layer.attention == "linear":
        state[f"{attention}.proj.weight"] = torch.zeros(hidden, hidden, dtype=dtype)
    if layer.attention == "keep":
        q, k, v, o = adapter.attention_linears(src)
        q_rows, kv_rows = head_rows(layer.q_heads, hd), head_rows(layer.kv_heads, hd)
        _put_rows(state, f"{attention}.", family.qkv, ((q, q_rows), (k, kv_rows), (v, kv_rows)))
        state[f"{attention}.{family.o}.weight"] = o.weight[:, q_rows]
        if o.bias is not None:
            state[f"{attention}.{family.o}.bias"] = o.bias
        elif layer.attention_out_bias:
            state[f"{attention}.{family.o}.bias"] = torch.zeros(hidden, dtype=dtype)
        norms = adapter.qk_norms(src)
        if norms is not None:
            for name, norm in zip(family.qk_norms, norms):
                state[f"{attention}.{name}.weight"] = norm.weight
        if post_attention:
            state[f"{post_attention}.weight"] = adapter.post_norm(src, ATTENTION_OUTPUT).weight
    if layer.mlp != "skip":
        state[f"{pre_mlp}.weight"] = adapter.mlp_norm(src).weight
    if layer.mlp == "linear":
        state[f"{mlp}.proj.weight"] = torch.zeros(hidden, hidden, dtype=dtype)
    if layer.mlp == "keep":
        gate, up, down = adapter.mlp_linears(src)
        channels = torch.tensor(layer.mlp_channels, dtype=torch.long)
        _put_rows(state, f"{mlp}.", family.gate_up, ((gate, channels), (up, channels)))
        state[f"{mlp}.{family.down}.weight"] = down.weight[:, channels]
        if down.bias is not None:
            state[f"{mlp}.{family.down}.bias"] = down.bias
        elif layer.mlp_out_bias:
            state[f"{mlp}.{family.down}.bias"] = torch.zeros(hidden, dtype=dtype)
        if post_mlp:
            state[f"{post_mlp}.weight"] = adapter.post_norm(src, MLP_OUTPUT).weight
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def _put_rows(state: dict[str, torch.Tensor], prefix: str, names: tuple[str, ...], parts) -> None:
    """The kept rows of each (linear, rows) part, under its own name, or stacked under one fused name."""
    weights = [linear.weight[rows] for linear, rows in parts]
    biases = [linear.bias[rows] if linear.bias is not None else None for linear, rows in parts]
    if len(names) == 1:  # fused: one tensor, parts stacked in order
        weights, biases = [torch.cat(weights)], [None if any(b is None for b in biases) else torch.cat(biases)]
    for name, weight, bias in zip(names, weights, biases, strict=True):
        state[f"{prefix}{name}.weight"] = weight
        if bias is not None:
            state[f"{prefix}{name}.bias"] = bias


@torch.no_grad()
def mask_weights(model: nn.Module, spec: ArchSpec) -> nn.Module:
    """Zero, in place, the dense weights whose removal `spec` describes; returns `model`.

    A removed query head loses its o_proj columns, a removed MLP channel its down_proj
    columns, a skipped sublayer its whole output projection. (Linear replacements have
    no masked equivalent.)
    """
    spec.validate()
    adapter = adapter_for(model.config)
    hd = spec.base.head_dim
    by_source = {layer.source: layer for layer in spec.layers}
    for index, src in enumerate(adapter.layers(model)):
        layer = by_source.get(index, LayerSpec(source=index, attention="skip", mlp="skip"))
        if "linear" in (layer.attention, layer.mlp):
            raise ValueError(f"layer {index}: a linear replacement cannot be expressed as a mask")
        o = adapter.attention_linears(src).o
        kept_cols = head_rows(layer.q_heads, hd) if layer.attention == "keep" else torch.empty(0, dtype=torch.long)
        _zero_columns_except(o, kept_cols)
        down = adapter.mlp_linears(src).down
        kept = torch.tensor(layer.mlp_channels, dtype=torch.long) if layer.mlp == "keep" else torch.empty(0, dtype=torch.long)
        _zero_columns_except(down, kept)
    return model


def _zero_columns_except(linear: nn.Linear, kept: torch.Tensor) -> None:
    mask = torch.zeros(linear.in_features, dtype=torch.bool)
    mask[kept] = True
    linear.weight[:, ~mask] = 0
    if kept.numel() == 0 and linear.bias is not None:
        linear.bias.zero_()
