"""A per-layer decode-latency table, measured once on the model's backend, and predictions from it.

A decode step of a sculpted model costs a constant (embedding, final norm, LM head, the
per-step bookkeeping) plus, for every layer, its attention (by shape: KV groups x query
heads per group) and its MLP (by width). Each entry is timed on a stack of identical
layers (random weights, as many as fill `stream_bytes`, so weights stream from memory as
in the real model instead of sitting in cache), one token at a time against a KV cache of
`context` tokens. The constant is the measured dense decode step minus its layers' entries,
so the table predicts the dense model exactly and a candidate's speed-up is
dense step / predicted step.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from pipeline.compress.width.legal_widths import AttentionShape, attention_shapes
from pipeline.measures.latency import decode_throughput
from pipeline.models.adapters import ADAPTERS
from pipeline.models.modeling_sculpted import SculptedDecoderLayer, family_modules
from pipeline.models.slicing import sculpted_config
from pipeline.models.spec import ArchSpec, BaseDims, LayerSpec, layer_parameters

Shapes = Iterable[tuple[AttentionShape | None, int]]  # per layer: attention shape (None: skipped), MLP width (0: skipped)


@dataclass(frozen=True)
class LatencyTable:
    attention: dict[str, float]  # "groups x per_group" -> seconds per decode step of an attention sublayer
    mlp: dict[int, float]  # width -> seconds per decode step of an MLP sublayer
    constant: float  # the rest of a decode step (embedding, final norm, LM head, bookkeeping)
    dense_step: float  # measured decode step of the dense source model
    context: int  # KV-cache length the attention entries were timed at
    machine: dict = field(default_factory=dict)  # where and how it was measured (the cache key)

    def step(self, shapes: Shapes) -> float:
        """Predicted seconds per decode step of a model with these layers."""
        total = self.constant
        for shape, width in shapes:
            if shape is not None:
                total += self.attention[shape_key(shape)]
            if width:
                total += self.mlp[width]
        return total

    def speedup(self, shapes: Shapes) -> float:
        return self.dense_step / self.step(shapes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mlp"] = {str(width): t for width, t in self.mlp.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        return cls(**{**data, "mlp": {int(width): t for width, t in data["mlp"].items()}})


def shape_key(shape: AttentionShape) -> str:
    return f"{shape.num_kv_heads}x{shape.per_group}"


def machine_key(model, base: BaseDims, context: int, widths: Iterable[int], processor: str) -> dict:
    """What a measured table depends on: reuse a cached table only when all of it matches."""
    parameter = next(model.parameters())
    return {"base": base.to_dict(), "device": str(parameter.device), "dtype": str(parameter.dtype).removeprefix("torch."),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": processor,
            "context": context, "widths": list(widths)}


@torch.no_grad()
def measure_latency_table(model, base: BaseDims, widths: Iterable[int], context: int = 512,
                          stream_bytes: int = 128 * 2**20, repeats: int = 5, steps: int = 8,
                          progress: bool = True, processor: str = "") -> LatencyTable:
    """Time every attention shape and MLP width of `base` on `model`'s device and dtype."""
    widths = sorted(set(widths))
    shapes = attention_shapes(base)
    bar = tqdm(total=len(shapes) + len(widths) + 1, desc="latency table", unit="entry", disable=not progress)
    with bar:
        attention = {}
        for shape in shapes:
            layer = LayerSpec(0, num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads, mlp="skip")
            attention[shape_key(shape)] = _layer_step(model, base, layer, context, stream_bytes, repeats, steps)
            bar.update()
        raw = []
        for width in widths:
            layer = LayerSpec(0, attention="skip", intermediate_size=width)
            raw.append(_layer_step(model, base, layer, context, stream_bytes, repeats, steps))
            bar.update()
        # A wider MLP is never faster; a dip is timing noise, so each entry is at least the narrower ones.
        mlp = dict(zip(widths, np.maximum.accumulate(raw).tolist()))
        dense = decode_throughput(model, prompt_len=context, new_tokens=2 * steps, repeats=repeats).step.median_s
        bar.update()
    full = attention[shape_key(AttentionShape(base.num_kv_heads, base.group_size))] + mlp[base.intermediate_size]
    return LatencyTable(attention, mlp, constant=dense - base.num_layers * full, dense_step=dense, context=context,
                        machine=machine_key(model, base, context, widths, processor))


def _layer_step(model, base: BaseDims, layer: LayerSpec, context: int, stream_bytes: int, repeats: int,
                steps: int) -> float:
    """Median seconds per decode step of one layer like `layer`, timed on a stack of copies."""
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    per_layer = _layer_bytes(base, layer, parameter.element_size())
    count = max(2, min(128, math.ceil(stream_bytes / per_layer)))
    spec = ArchSpec(base, tuple(replace(layer, source=i % base.num_layers) for i in range(count)))
    config = sculpted_config(model.config, spec)
    config._attn_implementation = model.config._attn_implementation
    adapter = ADAPTERS[base.model_type]
    with torch.device(device):
        stack = [SculptedDecoderLayer(config, i).to(dtype).eval() for i in range(count)]
        rotary = family_modules(base.model_type).rotary(config=config.family_config())
        cache = DynamicCache()
        token = torch.randn(1, 1, base.hidden_size, dtype=dtype)
        if layer.has_attention:  # fill the KV cache with `context` tokens
            prompt = torch.randn(1, context, base.hidden_size, dtype=dtype)
            prompt_rotary = _rotary_by_kind(adapter, rotary, prompt, torch.arange(context).unsqueeze(0), stack)
            for module in stack:
                module(prompt, position_embeddings=prompt_rotary[module.attention_kind], past_key_values=cache)
        token_rotary = _rotary_by_kind(adapter, rotary, token, torch.tensor([[context]]), stack)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples = []
    for repeat in range(repeats + 1):  # the first round warms up
        for _ in range(steps):
            sync()
            began = time.perf_counter()
            hidden = token
            for module in stack:
                hidden = module(hidden, position_embeddings=token_rotary[module.attention_kind], past_key_values=cache)
            sync()
            if repeat:
                samples.append((time.perf_counter() - began) / count)
        if layer.has_attention:
            cache.crop(-steps)  # back to `context` tokens
    return statistics.median(samples)


def _rotary_by_kind(adapter, rotary, hidden: torch.Tensor, positions: torch.Tensor, stack) -> dict:
    """The RoPE table of each attention kind in `stack`, as the family computes it (one base per kind in gemma3)."""
    return {kind: adapter.rotary_table(rotary, hidden, positions, kind)
            for kind in {module.attention_kind for module in stack}}


def _layer_bytes(base: BaseDims, layer: LayerSpec, element_size: int) -> int:
    return max(1, layer_parameters(base, layer) * element_size)
