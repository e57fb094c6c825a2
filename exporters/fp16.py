"""Mixed precision for an fp16 graph: run the ops that overflow or lose too much in fp16 in fp32.

The torch exporter keeps RMSNorm's reduction in fp32 (the family modules upcast), but leaves
Softmax in fp16 whatever the attention backend. `pin_to_fp32` wraps such ops in Casts
(fp16 -> fp32 before, fp32 -> fp16 after), so the graph itself carries the precision:
TensorRT 11 (always strongly typed) and strongly-typed TensorRT 10 obey exactly these dtypes.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto, helper

FP32_OPS = ("Softmax",)  # the ops pinned by default; RMSNorm's ReduceMean is fp32 already
NORM_OPS = ("ReduceMean",)  # where an RMSNorm computes its statistic


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed value in the graph (inputs, outputs, value_info, initializers)."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def pin_to_fp32(model: onnx.ModelProto, op_types: tuple[str, ...] = FP32_OPS) -> int:
    """Rewrite `model` in place so each `op_types` node with fp16 inputs computes in fp32; returns how many."""
    graph = model.graph
    types = value_types(model)
    nodes, pinned = [], 0
    for node in graph.node:
        if node.op_type not in op_types or not node.input or types.get(node.input[0]) != TensorProto.FLOAT16:
            nodes.append(node)
            continue
        pinned += 1
        tag = node.name or f"{node.op_type}_{pinned}"
        for position, name in enumerate(node.input):
            if types.get(name) == TensorProto.FLOAT16:
                wide = f"{tag}/fp32_in{position}"
                nodes.append(helper.make_node("Cast", [name], [wide], to=TensorProto.FLOAT, name=f"{tag}/cast_in{position}"))
                graph.value_info.append(helper.make_tensor_value_info(wide, TensorProto.FLOAT, None))
                node.input[position] = wide
        nodes.append(node)
        for position, name in enumerate(node.output):
            wide = f"{tag}/fp32_out{position}"
            node.output[position] = wide
            graph.value_info.append(helper.make_tensor_value_info(wide, TensorProto.FLOAT, None))
            nodes.append(helper.make_node("Cast", [wide], [name], to=TensorProto.FLOAT16, name=f"{tag}/cast_out{position}"))
    del graph.node[:]
    graph.node.extend(nodes)
    return pinned


def compute_dtypes(model: onnx.ModelProto, op_types: tuple[str, ...] = FP32_OPS + NORM_OPS) -> dict[str, Counter]:
    """For each op type, how many of its nodes compute in each dtype (by their first input): {"Softmax": {"float": 12}}."""
    types = value_types(model)
    found: dict[str, Counter] = {op: Counter() for op in op_types}
    for node in model.graph.node:
        if node.op_type in found and node.input:
            dtype = types.get(node.input[0])
            found[node.op_type][TensorProto.DataType.Name(dtype).lower() if dtype else "unknown"] += 1
    return found
