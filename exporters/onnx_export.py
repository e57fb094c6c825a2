"""Export a sculpted (or dense, sliced with ArchSpec.dense) causal LM to ONNX with a KV cache.

torch's dynamo exporter traces a thin wrapper that takes flat tensors (ids, mask,
positions, one key and one value per cache entry), rebuilds a DynamicCache from them,
runs the model and returns the logits and the grown cache as flat tensors again.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import load_external_data_for_model
from torch import nn
from transformers.cache_utils import DynamicCache

from pipeline.errors import SculptError

from .fp16 import pin_to_fp32
from .onnx_io import ATTENTION_MASK, BATCH, INPUT_IDS, PAST, POSITION_IDS, SEQ, TOTAL, GraphIO


class FlatCacheLM(nn.Module):
    """The model with flat tensor I/O: (ids, mask, positions, *past) -> (logits, *present).

    Every cache entry is full length, sliding-window layers included: the graph has one past/present
    length for all entries, and a sliding layer's window is applied by its mask (the model makes one
    mask per attention kind), so it computes what the source does while its cache holds every token."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.entries = len(model.config.attention_layers)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache()  # full-length entries (see the class docstring), not the config's sliding ones
        for index in range(self.entries):
            cache.update(past[2 * index], past[2 * index + 1], index)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for index in range(self.entries):
            layer = out.past_key_values.layers[index]
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def example_inputs(io: GraphIO, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Example inputs whose dynamic dims are all >= 2: torch.export specialises dims of size 0 or 1."""
    batch, seq, past = 2, 3, 4
    shapes = io.input_shapes(batch, seq, past)
    ids = torch.randint(0, io.vocab_size, shapes[INPUT_IDS], device=device)
    mask = torch.ones(shapes[ATTENTION_MASK], dtype=torch.long, device=device)
    positions = torch.arange(past, past + seq, device=device).expand(batch, seq).contiguous()
    kv = [torch.randn(shapes[name], dtype=dtype, device=device) for name in io.past_inputs]
    return (ids, mask, positions, *kv)


def dynamic_shapes(io: GraphIO, max_positions: int) -> tuple:
    batch = torch.export.Dim(BATCH, min=1, max=1024)
    seq = torch.export.Dim(SEQ, min=1, max=max_positions)
    past = torch.export.Dim(PAST, min=1, max=max_positions)
    total = torch.export.Dim(TOTAL, min=2, max=2 * max_positions)  # = past + sequence, which torch infers
    kv = tuple({0: batch, 2: past} for _ in io.past_inputs)
    return ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, kv)  # *past is one element


def trace_to_onnx(model: nn.Module, io: GraphIO, optimize: bool = True):
    """torch.onnx.export (dynamo) of `model` with flat KV-cache I/O named and shaped as `io` says."""
    param = next(model.parameters())
    inputs = example_inputs(io, param.dtype, param.device)
    max_positions = int(getattr(model.config, "max_position_embeddings", 4096))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            FlatCacheLM(model).eval(), inputs, dynamo=True, opset_version=io.opset, optimize=optimize,
            dynamic_shapes=dynamic_shapes(io, max_positions), input_names=io.input_names,
            output_names=io.output_names, verbose=False)
    return program


# ---- the exporter ------------------------------------------------------------------
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PROTOBUF_LIMIT = 2**31 - 2**26  # one ONNX file holds < 2 GiB; keep a margin for the graph itself
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass(frozen=True)
class ExportedGraph:
    directory: Path
    io: GraphIO
    precision: str
    external_data: bool
    fp32_pinned: int  # ops wrapped in fp32 Casts by the fp16 pass
    seconds: float

    @property
    def path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.path, self.directory / DATA_FILE) if f.is_file())


def as_sculpted(model: nn.Module) -> nn.Module:
    """A sculpted model as is; a dense source sliced with the identity spec (so one export path serves both)."""
    if getattr(model.config, "model_type", None) == "sculpted":
        return model
    from pipeline.models.adapters import adapter_for
    from pipeline.models.slicing import slice_model
    from pipeline.models.spec import ArchSpec

    return slice_model(model, ArchSpec.dense(adapter_for(model.config).dims(model.config)))


def export_model(model: nn.Module, directory: str | Path, precision: str = "fp32", opset: int = 18,
                 external_data: bool | None = None) -> ExportedGraph:
    """Write `directory/model.onnx` (+ `model.onnx.data` when external) and `io.json` for `model`.

    external_data None chooses by size: weights go to a side file only when one file would pass 2 GiB.
    """
    if precision not in PRECISIONS:
        raise SculptError(f"export precision {precision!r} is not supported: choose one of {', '.join(PRECISIONS)}")
    began = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    work = export_copy(as_sculpted(model), PRECISIONS[precision])
    io = GraphIO.from_config(work.config, str(PRECISIONS[precision]).removeprefix("torch."), opset)
    program = trace_to_onnx(work, io)
    path = directory / MODEL_FILE
    program.save(str(path), external_data=True)  # graph passes then read the structure only
    graph = onnx.load(str(path), load_external_data=False)
    _strip_trace_metadata(graph)
    pinned = pin_to_fp32(graph) if precision == "fp16" else 0
    weights = (directory / DATA_FILE).stat().st_size if (directory / DATA_FILE).is_file() else 0
    external = weights >= PROTOBUF_LIMIT if external_data is None else external_data
    if external:
        onnx.save(graph, str(path))
    else:
        load_external_data_for_model(graph, str(directory))
        (directory / DATA_FILE).unlink(missing_ok=True)
        onnx.save(graph, str(path))
    onnx.checker.check_model(str(path))
    io.save(directory)
    return ExportedGraph(directory, io, precision, external, pinned, time.perf_counter() - began)


def export_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy in the export dtype with an attention backend the exporter decomposes (sdpa or eager)."""
    work = copy.deepcopy(model).to(dtype).eval()
    if work.config._attn_implementation not in ("sdpa", "eager"):
        work.set_attn_implementation("sdpa")
    return work


def _strip_trace_metadata(graph: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces: they bloat the file and carry this machine's paths."""
    for node in graph.graph.node:
        del node.metadata_props[:]
