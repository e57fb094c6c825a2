"""Where an exported graph's weights come from, and how they reach its external data file one tensor at a time.

The graph is traced on a fake model (exporters/onnx_export.py: no weight is ever in memory while tracing), so its
initializers are names, dtypes and shapes only. `bind_weights` gives each one a lazy value that a
`WeightSource` reads when the graph is saved: `ModuleWeights` from a model in memory, `CheckpointWeights`
from a safetensors checkpoint (memory-mapped, one tensor read, cast and written at a time). So exporting a
checkpoint never holds more than its largest tensor in the export dtype (plus its transpose), whatever the
model's size.

`fold_weight_transposes` does what the ONNX optimizer's constant folding does to a Linear weight (stores
W^T for MatMul), but lazily: the transposed tensor is made when it is written, not while optimizing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

import onnx_ir as ir
import torch
from torch import nn

TORCH_DTYPES = {ir.DataType.FLOAT: torch.float32, ir.DataType.FLOAT16: torch.float16,
                ir.DataType.BFLOAT16: torch.bfloat16, ir.DataType.INT64: torch.int64}
WRAPPER_PREFIX = "model."  # FlatCacheLM holds the model as `.model`: its initializers are named "model.<name>"
TRANSPOSED_SUFFIX = ".transposed"


class WeightSource(Protocol):
    """The tensors of a model by their names in it (parameters and buffers), read on demand."""

    def read(self, name: str) -> torch.Tensor: ...


class ModuleWeights:
    """The parameters and buffers of a model in memory."""

    def __init__(self, model: nn.Module) -> None:
        self._tensors = {**dict(model.named_buffers(remove_duplicate=False)),
                         **dict(model.named_parameters(remove_duplicate=False))}

    def read(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            raise KeyError(f"the model has no tensor {name!r}")
        return self._tensors[name].detach()


class CheckpointWeights:
    """The tensors of a safetensors checkpoint (single file or sharded), read one at a time with `safe_open`;
    a tied weight the checkpoint stores once is read under its stored name (`aliases`), and buffers that are
    not stored (RoPE tables) come from `buffers`."""

    def __init__(self, directory: Path, aliases: dict[str, str], buffers: dict[str, torch.Tensor]) -> None:
        from pipeline.models.lazy_weights import checkpoint_files

        self.directory = Path(directory)
        self.files = checkpoint_files(self.directory)
        self.aliases = aliases
        self.buffers = buffers

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name in self.buffers:
            return self.buffers[name]
        key = name if name in self.files else self.aliases.get(name)
        if key not in self.files:
            raise KeyError(f"{self.directory} has no tensor {name!r}: re-run the slice stage")
        with safe_open(self.files[key], framework="pt", device="cpu") as handle:
            return handle.get_tensor(key)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{name: every other name of the same parameter} of a (fake or skeleton) model: tied weights."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return {name: other for names in by_tensor.values() if len(names) > 1 for name in names for other in names
            if other != name}


def _value(source: WeightSource, name: str, dtype: ir.DataType, shape: tuple[int, ...],
           transpose: bool = False) -> ir.TensorProtocol:
    tensor = source.read(name)
    if tuple(tensor.shape) != (shape[::-1] if transpose else shape):
        raise ValueError(f"{name}: the weights hold shape {tuple(tensor.shape)}, the traced graph expects "
                         f"{shape[::-1] if transpose else shape}")
    tensor = tensor.to(TORCH_DTYPES[dtype])
    if transpose:
        tensor = tensor.T
    return ir.tensor(tensor.contiguous().numpy())


def _lazy(read: Callable[[], ir.TensorProtocol], dtype: ir.DataType, shape: tuple[int, ...], name: str
          ) -> ir.LazyTensor:
    return ir.LazyTensor(read, dtype=dtype, shape=ir.Shape(shape), name=name)


def traced_constant(value: ir.Value) -> torch.Tensor | None:
    """The real value of a constant the trace made itself (a tensor built in forward, e.g. gemma's embedding
    scale: the exporter lifts it as a real tensor, or a fake one that keeps it as `.constant`). None for the
    model's own weights and buffers, which are fake."""
    from torch._subclasses.fake_tensor import FakeTensor

    raw = getattr(value.const_value, "raw", None)
    if isinstance(raw, FakeTensor):
        return raw.constant
    return raw if isinstance(raw, torch.Tensor) else None


def bind_weights(graph: ir.Graph, source: WeightSource, buffers: set[str]) -> int:
    """Give every initializer of the traced `graph` its value: constants the trace made, and buffers
    (`buffers`, model names) from `source`, now, as they are small; parameters lazily from `source`, read when
    the graph is saved. Returns how many are lazy."""
    lazy = 0
    for name, value in graph.initializers.items():
        tensor_name = name.removeprefix(WRAPPER_PREFIX)
        shape = tuple(int(d) for d in value.shape)
        constant = traced_constant(value)
        if constant is not None:
            value.const_value = ir.tensor(constant.to(TORCH_DTYPES[value.dtype]).contiguous().numpy())
        elif tensor_name in buffers:
            value.const_value = _value(source, tensor_name, value.dtype, shape)
        else:
            value.const_value = _lazy(partial(_value, source, tensor_name, value.dtype, shape), value.dtype, shape,
                                      name)
            lazy += 1
    return lazy


def is_lazy_weight(value: ir.Value | None) -> bool:
    return value is not None and isinstance(value.const_value, ir.LazyTensor)


def keeps_weights_lazy(node: ir.Node) -> bool | None:
    """A `should_fold` rule for the ONNX optimizer: never fold a node that reads a lazy weight (folding would
    materialise it); otherwise its default rules."""
    return False if any(is_lazy_weight(value) for value in node.inputs) else None


def fold_weight_transposes(graph: ir.Graph, source: WeightSource) -> int:
    """Replace each Transpose of a 2-D lazy weight by a lazy initializer holding the transposed weight (written
    as W^T, as constant folding would store it). The weight itself stays where something else reads it (a tied
    embedding's Gather). Returns how many were folded."""
    folded = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        weight = node.inputs[0]
        perm = node.attributes.get("perm")
        if not is_lazy_weight(weight) or len(weight.shape) != 2 or (perm is not None and list(perm.value) != [1, 0]):
            continue
        name = weight.name.removeprefix(WRAPPER_PREFIX)
        shape = tuple(int(d) for d in weight.shape)[::-1]
        transposed = ir.Value(name=f"{weight.name}{TRANSPOSED_SUFFIX}", shape=ir.Shape(shape), type=weight.type,
                              const_value=_lazy(partial(_value, source, name, weight.dtype, shape, True),
                                                weight.dtype, shape, f"{weight.name}{TRANSPOSED_SUFFIX}"))
        graph.register_initializer(transposed)
        ir.convenience.replace_all_uses_with(node.outputs[0], transposed)
        graph.remove(node, safe=True)
        if not weight.uses():
            graph.initializers.pop(weight.name)
        folded += 1
    return folded
