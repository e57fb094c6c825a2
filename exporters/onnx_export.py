"""Export a sculpted (or dense, sliced with ArchSpec.dense) causal LM to ONNX with a KV cache.

torch's dynamo exporter traces a thin wrapper that takes flat tensors (ids, mask,
positions, one key and one value per cache entry), rebuilds a DynamicCache from them,
runs the model and returns the logits and the grown cache as flat tensors again.

The trace never sees a weight: it runs on a fake copy of the model (torch's FakeTensorMode: shapes and dtypes,
no storage), built from the config in the export dtype. The graph's initializers then get their values from a
`WeightSource` (exporters/onnx_weights.py), read, cast and written to the external data file one tensor at a
time: `export_checkpoint` reads a safetensors checkpoint (a sliced 7B model exports in the memory of its largest
tensor), `export_model` a model in memory. Both take the same path, so they write the same graph.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from onnx.external_data_helper import load_external_data_for_model
from torch import nn
from transformers.cache_utils import DynamicCache

from pipeline.errors import SculptError

from .fp16 import pin_to_fp32
from .onnx_io import (
    ATTENTION_MASK,
    BATCH,
    INPUT_IDS,
    PAST,
    SEQ,
    TOTAL,
    GraphIO,
)
from .onnx_weights import (
    CheckpointWeights,
    ModuleWeights,
    WeightSource,
    bind_weights,
    fold_weight_transposes,
    keeps_weights_lazy,
    tied_aliases,
)


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
    """torch.onnx.export (dynamo) of `model` with flat KV-cache I/O named and shaped as `io` says.

    `model` may be fake (its tensors FakeTensors, see `fake_model`): the example inputs are made in its mode."""
    param = next(model.parameters())
    mode = getattr(param, "fake_mode", None)
    with mode if mode is not None else contextlib.nullcontext():
        inputs = example_inputs(io, param.dtype, param.device)
    max_positions = int(getattr(model.config, "max_position_embeddings", 4096))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            FlatCacheLM(model).eval(), inputs, dynamo=True, opset_version=io.opset, optimize=optimize,
            dynamic_shapes=dynamic_shapes(io, max_positions), input_names=io.input_names,
            output_names=io.output_names, verbose=False)
    return program


def fake_model(config, dtype: torch.dtype) -> nn.Module:
    """The sculpted model of `config` in `dtype` with fake tensors (shapes and dtypes, no storage), attention
    through a backend the exporter decomposes (sdpa or eager)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pipeline.models.modeling_sculpted import SculptedForCausalLM

    with FakeTensorMode():
        model = SculptedForCausalLM._from_config(copy.deepcopy(config), dtype=dtype).eval()
    if model.config._attn_implementation not in ("sdpa", "eager"):
        model.set_attn_implementation("sdpa")
    return model


def rope_buffers(config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The buffers (RoPE tables) of the sculpted model of `config`, computed for real on a skeleton whose
    parameters stay on the meta device (as from_pretrained makes them: float32 whatever `dtype`)."""
    from accelerate import init_empty_weights

    from pipeline.models.modeling_sculpted import SculptedForCausalLM

    with init_empty_weights():
        skeleton = SculptedForCausalLM._from_config(copy.deepcopy(config), dtype=dtype)
    return {name: buffer for name, buffer in skeleton.named_buffers()}


def optimize_lazily(model: ir.Model, source: WeightSource) -> None:
    """The exporter's own ONNX optimizer (constant folding, rewrites, inlining), except that no weight is read:
    nodes reading a weight are not folded, and Linear weights are stored transposed as folding would have
    stored them, by `fold_weight_transposes`, lazily."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    fold_weight_transposes(model.graph, source)
    onnxscript.optimizer.optimize_ir(model, should_fold=keeps_weights_lazy)
    onnxscript.rewriter.onnx_fusions.fuse(model)
    fold_weight_transposes(model.graph, source)  # any the inlining revealed


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
    """Write `directory/model.onnx` (+ `model.onnx.data` when external) and `io.json` for `model` (in memory).

    external_data None chooses by size: weights go to a side file only when one file would pass 2 GiB.
    """
    sculpted = as_sculpted(model)
    return _export(sculpted.config, ModuleWeights(sculpted), directory, precision, opset, external_data)


def export_checkpoint(checkpoint: str | Path, directory: str | Path, precision: str = "fp32", opset: int = 18,
                      external_data: bool | None = None) -> ExportedGraph:
    """`export_model` of the sculpted checkpoint in `checkpoint` (what the slice stage writes), without loading
    it: the weights are read from its safetensors files one tensor at a time, cast to the export dtype and
    written to the external data file, so the export holds about one tensor of the model at a time."""
    from transformers import AutoConfig

    import pipeline  # noqa: F401  (registers the sculpted config)

    config = AutoConfig.from_pretrained(checkpoint)
    if config.model_type != "sculpted":
        raise SculptError(f"{checkpoint} holds a {config.model_type} model: export reads sculpted checkpoints "
                          "(the slice stage's slice/model)")
    dtype = _precision_dtype(precision)
    weights = CheckpointWeights(Path(checkpoint), tied_aliases(fake_model(config, dtype)), rope_buffers(config, dtype))
    return _export(config, weights, directory, precision, opset, external_data)


def _precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise SculptError(f"export precision {precision!r} is not supported: choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _export(config, weights: WeightSource, directory: str | Path, precision: str, opset: int,
            external_data: bool | None) -> ExportedGraph:
    """Trace the fake model of `config`, bind its initializers to `weights`, optimize without reading them, and
    write the graph with every weight in `model.onnx.data` (one tensor in memory at a time); then the fp16
    pass, and the weights inline when `external_data` says so (or, None, when they stay under 2 GiB)."""
    dtype = _precision_dtype(precision)
    began = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    traced = fake_model(config, dtype)
    io = GraphIO.from_config(traced.config, str(dtype).removeprefix("torch."), opset)
    program = trace_to_onnx(traced, io, optimize=False)
    buffers = {name for name, _ in traced.named_buffers()}
    del traced
    bind_weights(program.model.graph, weights, buffers)
    optimize_lazily(program.model, weights)
    path = directory / MODEL_FILE
    (directory / DATA_FILE).unlink(missing_ok=True)
    ir.save(program.model, str(path), external_data=DATA_FILE)  # each lazy weight read, cast, written, dropped
    del program
    graph = onnx.load(str(path), load_external_data=False)
    _strip_trace_metadata(graph)
    pinned = pin_to_fp32(graph) if precision == "fp16" else 0
    weights_bytes = (directory / DATA_FILE).stat().st_size if (directory / DATA_FILE).is_file() else 0
    external = weights_bytes >= PROTOBUF_LIMIT if external_data is None else external_data
    if not external:
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
