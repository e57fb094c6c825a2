"""The file layout of a Hugging Face safetensors checkpoint: one `model.safetensors`, or numbered shards plus an
index naming the shard of every tensor. One place for it, so every writer (slice, the text tower, the GGUF cache)
and the streamed reader agree."""

from __future__ import annotations

import json
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def shard_name(number: int, count: int) -> str:
    """The file name of shard `number` (from 1) of `count`; a checkpoint of one shard is `model.safetensors`."""
    return SINGLE_FILE if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


def write_index(directory: Path, weight_map: dict[str, str], total_size: int) -> None:
    """`model.safetensors.index.json` for the tensors `weight_map` puts in each shard, `total_size` bytes in all."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (Path(directory) / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
