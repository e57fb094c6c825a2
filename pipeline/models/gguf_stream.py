"""A GGUF file dequantised tensor by tensor into a sharded safetensors checkpoint, never the whole model in memory.

transformers' GGUF loader dequantises every tensor into one state dict and builds the model from it: a 7B
model is 28 GB in float32 before anything is written. Here the file is memory-mapped (`gguf.GGUFReader`),
each tensor is dequantised (`gguf.dequantize`), given transformers' own per-family fix-ups (its
`TENSOR_PROCESSORS`: e.g. Llama's Q/K head order, Gemma's norm offset) and its GGUF-to-HF name map, and
added to a shard that is written to disk once it reaches `shard_bytes`. The checkpoint is what
`save_pretrained` writes for the same weights (shards plus `model.safetensors.index.json`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.errors import SculptError

from .checkpoint_files import shard_name, write_index

SHARD_BYTES = 2 << 30  # 2 GiB per shard: one shard is the most this holds in memory


def write_dequantised(gguf: Path, config, directory: Path, dtype: torch.dtype = torch.float32,
                      shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write the weights of `gguf` (a transformers `config` read from it) as safetensors shards under `directory`,
    cast to `dtype`; returns the parameter names written, in file order. Records the model class in
    `config.architectures`, as `save_pretrained` does."""
    from accelerate import init_empty_weights
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint)

    reader = GGUFReader(gguf)  # memory-mapped: a tensor's pages are read when it is dequantised
    field = reader.fields["general.architecture"]
    architecture = bytes(field.parts[field.data[0]]).decode()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(
        config=load_gguf_checkpoint(str(gguf), return_tensors=False)["config"])
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(skeleton).__name__]
    names = get_gguf_hf_weights_map(skeleton, processor)
    del skeleton
    shards = _ShardWriter(directory, shard_bytes)
    for tensor in reader.tensors:
        elsewhere: dict = {"tensors": {}}
        result = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters=elsewhere)
        if elsewhere["tensors"]:  # a processor that assembles tensors across the file (mixture-of-experts)
            raise SculptError(f"{gguf}: the {architecture} GGUF layout builds tensors from several pieces, which "
                              "the streamed dequantiser does not support; use a model directory instead")
        if result.name in names:
            shards.add(names[result.name], torch.tensor(np.asarray(result.weights), dtype=dtype))  # a copy
    return shards.close()


class _ShardWriter:
    """Tensors to numbered safetensors shards of at most `limit` bytes each (a bigger tensor gets its own), then
    the shard names fixed to `model-0000i-of-0000n` and the index written."""

    def __init__(self, directory: Path, limit: int):
        self.directory, self.limit = Path(directory), limit
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes, self.files = 0, []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.limit:
            self._flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        if self.pending or not self.files:
            self._flush()
        count, names, where = len(self.files), [], {}
        for number, (path, tensors) in enumerate(self.files, 1):
            final = shard_name(number, count)
            path.rename(self.directory / final)
            where.update(dict.fromkeys(tensors, final))
            names += tensors
        if count > 1:
            write_index(self.directory, where, self.total)
        return names
