"""Weight-only int4/int8 quantization of an exported graph, for ONNX Runtime.

Decode is memory-bound: every step reads every weight once, so fewer bytes per weight is
where a decode speed-up beyond width pruning lives. ONNX Runtime's own quantizer
(`onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`) replaces each MatMul
whose weight is a constant [K, N] initializer by a `com.microsoft.MatMulNBits` node: the weight
in `bits`-bit integers, blocks of `block_size` consecutive input rows sharing one scale (and, when
not symmetric, one zero point). Activations, the KV cache and the logits stay fp32, so the graph
keeps the I/O of `onnx_io.GraphIO` and the same runners feed it.

Which MatMuls: every projection with a constant weight (q/k/v/o, gate/up/down, the linear
replacements of a sculpt) at `bits`, and the output projection as `lm_head` says: int8 (the
default: on SmolLM2 an int4 head alone raised perplexity from +28 % to +43 % over fp32, and an
int8 head decodes as fast), the export's bits (`same`), or fp32. The attention products (Q·Kᵀ,
softmax·V) have no constant weight and stay fp32.

Tied embeddings: where the source ties the output projection to the token embedding (SmolLM2),
the exported graph may compute the logits as `MatMul(x, Transpose(embedding))`, which the
quantizer cannot see as a constant weight. We give that MatMul its own transposed copy of the
weight (`untie_output_projection`) so it is quantized; the embedding `Gather` keeps the fp32
table (a lookup reads one row per token, so its bytes do not slow decoding). Where the exporter
already folded the transpose into a constant, nothing needs untying.

This module has no I/O beyond reading and writing the graph files it is given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.errors import SculptError

from .onnx_io import LOGITS

QUANTIZED_PRECISIONS = {"int4": 4, "int8": 8}  # export.precision -> bits per weight
ALGORITHMS = ("default", "hqq")  # onnxruntime's block-wise min-max round-to-nearest; HQQ (int4 only)
HEAD_CHOICES = ("int8", "same", "fp32")  # how the output projection is stored
QUANTIZED_OP = "MatMulNBits"
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"


@dataclass(frozen=True)
class WeightQuantization:
    """How the weights of a graph are quantized (what the manifest records)."""

    bits: int  # 4 or 8
    block_size: int  # input rows per scale; a power of two >= 16
    symmetric: bool  # no zero points (signed ints around 0) when true
    algorithm: str  # "default" (min-max round-to-nearest per block) or "hqq" (half-quadratic, int4 only)
    accuracy_level: int  # MatMulNBits compute type: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
    lm_head: str  # the output projection: "int8", "same" (`bits`) or "fp32"

    def __post_init__(self) -> None:
        if self.bits not in QUANTIZED_PRECISIONS.values():
            raise SculptError(f"weight quantization to {self.bits} bits is not supported: use int4 or int8")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise SculptError(f"quantization block size {self.block_size} is not a power of two >= 16: use 32, "
                              "64 or 128 (export.quantization.block_size)")
        if self.algorithm not in ALGORITHMS:
            raise SculptError(f"quantization algorithm {self.algorithm!r} is unknown: choose {' or '.join(ALGORITHMS)}")
        if self.algorithm == "hqq" and self.bits != 4:
            raise SculptError("the hqq algorithm quantizes to 4 bits only: set export.precision int4, or "
                              "export.quantization.algorithm default for int8")
        if self.lm_head not in HEAD_CHOICES:
            raise SculptError(f"lm_head {self.lm_head!r} is not one of {', '.join(HEAD_CHOICES)} "
                              "(export.quantization.lm_head)")
        if self.algorithm == "hqq" and self.symmetric:
            raise SculptError("the hqq algorithm always fits a zero point: set export.quantization.symmetric false")

    @classmethod
    def from_section(cls, precision: str, section) -> WeightQuantization:
        """From export.precision (int4 | int8) and the recipe's export.quantization section."""
        return cls(bits=QUANTIZED_PRECISIONS[precision], block_size=section.block_size, symmetric=section.symmetric,
                   algorithm=section.algorithm, accuracy_level=section.accuracy_level, lm_head=section.lm_head)

    @property
    def head_bits(self) -> int | None:
        """Bits of the output projection (None: kept fp32)."""
        return {"int8": 8, "same": self.bits, "fp32": None}[self.lm_head]

    @property
    def label(self) -> str:
        return f"int{self.bits}"

    def as_dict(self) -> dict:
        return {**asdict(self), "format": f"onnxruntime com.microsoft.{QUANTIZED_OP} (weight-only, block-wise)",
                "activations": "float32"}


@dataclass(frozen=True)
class QuantizedGraph:
    spec: WeightQuantization
    quantized: list[str]  # MatMul nodes now MatMulNBits
    kept: list[str]  # MatMuls with a constant weight left in fp32 (the output projection when lm_head is fp32)
    untied: bool  # the output projection got its own copy of a tied embedding
    bytes_before: int
    bytes_after: int
    seconds: float

    def as_dict(self) -> dict:
        return {**self.spec.as_dict(), "matmuls_quantized": len(self.quantized), "matmuls_kept_fp32": self.kept,
                "lm_head_bits": self.spec.head_bits, "lm_head_untied_from_embedding": self.untied,
                "embedding": "fp32 Gather (a lookup reads one row per token)",
                "onnx_bytes_before": self.bytes_before, "onnx_bytes_after": self.bytes_after,
                "quantize_s": round(self.seconds, 1)}


def output_projection(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The MatMul (or, once quantized, MatMulNBits) that produces the logits (the graph's `logits` output, perhaps
    through an Add of a bias)."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(LOGITS)
    while node is not None and node.op_type not in ("MatMul", QUANTIZED_OP):
        if node.op_type not in ("Add", "Cast", "Identity"):
            return None
        node = producers.get(node.input[0])
    return node


def untie_output_projection(model: onnx.ModelProto) -> bool:
    """Give the output projection a constant weight of its own where it reads a transposed initializer (tied
    embeddings): returns True when it did. The Transpose is removed if nothing else reads it."""
    graph = model.graph
    node = output_projection(graph)
    if node is None or node.op_type != "MatMul":
        return False
    initializers = {init.name: init for init in graph.initializer}
    if node.input[1] in initializers:
        return False  # already a constant [K, N] weight
    producers = {out: n for n in graph.node for out in n.output}
    transpose = producers.get(node.input[1])
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
        return False
    perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
    table = numpy_helper.to_array(initializers[transpose.input[0]])
    if table.ndim != 2 or (perm and perm[0] != [1, 0]):
        return False
    name = f"{node.name or 'lm_head'}.weight_untied"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
    node.input[1] = name
    if not any(transpose.output[0] in n.input for n in graph.node):
        graph.node.remove(transpose)
    return True


def quantize_graph(directory: str | Path, spec: WeightQuantization, external_data: bool | None = None,
                   size_limit: int = 2**31 - 2**26) -> QuantizedGraph:
    """Quantize `directory/model.onnx` (+ model.onnx.data) in place. External data: as asked, or (None) only when
    one file would pass `size_limit`."""
    began = time.perf_counter()
    directory = Path(directory)
    path, data = directory / MODEL_FILE, directory / DATA_FILE
    before = _bytes(directory)
    model = onnx.load(str(path))  # with its external data
    untied = untie_output_projection(model)
    head = output_projection(model.graph)
    head_name = [head.name] if head is not None else []
    # the projections at `bits`, the head left out when it gets other bits; then the head alone at its bits (the
    # only constant-weight MatMul left, so a second pass of the same quantizer takes exactly it)
    model = _quantize(model, spec, spec.bits, exclude=head_name if spec.head_bits != spec.bits else [])
    if head_name and spec.head_bits not in (None, spec.bits):
        model = _quantize(model, replace(spec, algorithm="default"), spec.head_bits, exclude=[])
    result = model.model
    if spec.algorithm == "hqq" and spec.accuracy_level:
        _set_accuracy_level(result.graph, spec.accuracy_level)  # ORT's HQQ path does not set it
    quantized = [n.name for n in result.graph.node if n.op_type == QUANTIZED_OP]
    initializers = {init.name for init in result.graph.initializer}
    kept = [n.name for n in result.graph.node if n.op_type == "MatMul" and n.input[1] in initializers]
    if not quantized:
        raise SculptError("the graph has no MatMul with a constant weight to quantize: export.precision int4/int8 "
                          "needs the exporter's fp32 graph (export.precision fp32 works)")
    weights = sum(init.ByteSize() for init in result.graph.initializer)
    external = weights >= size_limit if external_data is None else external_data
    data.unlink(missing_ok=True)
    model.save_model_to_file(str(path), use_external_data_format=external)
    onnx.checker.check_model(str(path))
    return QuantizedGraph(spec, quantized, kept, untied, before, _bytes(directory), time.perf_counter() - began)


def _quantize(model, spec: WeightQuantization, bits: int, exclude: list[str]):
    """One pass of onnxruntime's MatMulNBitsQuantizer over every constant-weight MatMul not in `exclude`; returns
    its ONNXModel wrapper."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if spec.algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=bits, op_types_to_quantize=("MatMul",))
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=spec.symmetric,
                                              accuracy_level=spec.accuracy_level or None, bits=bits,
                                              op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(model.model if hasattr(model, "model") else model, bits=bits,
                                     block_size=spec.block_size, is_symmetric=spec.symmetric,
                                     accuracy_level=spec.accuracy_level or None, nodes_to_exclude=exclude,
                                     op_types_to_quantize=("MatMul",), algo_config=config)
    with _quiet("onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer.process()
    return quantizer.model


def _set_accuracy_level(graph: onnx.GraphProto, level: int) -> None:
    for node in graph.node:
        if node.op_type == QUANTIZED_OP and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def _bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in (directory / MODEL_FILE, directory / DATA_FILE) if f.is_file())


class _quiet:
    """Silence a library logger's info lines (ORT's quantizer logs every node) for a block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.level)
