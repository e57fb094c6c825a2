"""A cache of the dense source model's deterministic figures, so each run scores only the sculpted model.

Scoring the source again on every run is expensive (a full WikiText-2 pass of SmolLM2 is
~25 min on a small CPU), and its perplexity depends only on the source, the evaluation text,
the perplexity settings, the machine and the library versions. Those make the key; an entry is
one JSON file under `<cache_root>/validate-source/`, written atomically. The report says when
figures came from here.

Only figures that come out the same every time are kept (`FIGURES`, `BACKEND_FIGURES`):
perplexity, the parameter count, bytes on disk. Timings depend on what else the machine runs at
the moment, and peak memory (a fresh process's resident set) on the allocator and the page
cache, so neither is ever stored or read back: the validate stage measures both on every run,
the timings side by side with the sculpted model's. An entry that holds more (written by hand,
or by an older llm-sculpt under the same key) gives only the deterministic figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from ...artifacts import library_versions
from ...artifacts.manifest import utc_now
from ...paths import atomic_write_json, cache_root, cpu_name, sha256_file

CACHE_SCHEMA = 2  # 1 also cached timings and memory, and keyed them by the whole workload
CACHE_DIR = "validate-source"
FIGURES = ("params", "checkpoint_bytes")  # of the model
BACKEND_FIGURES = ("perplexity", "size_bytes")  # of the model on a backend (`by_backend`)


def checkpoint_fingerprint(directory: Path) -> str:
    """sha256 over the config and weight files of a checkpoint directory (what its numbers depend on)."""
    names = sorted(p for pattern in ("config.json", "*.safetensors", "*.bin", "tokenizer.json")
                   for p in Path(directory).glob(pattern))
    listing = "".join(f"{sha256_file(p)}  {p.name}\n" for p in names)
    return "files:" + hashlib.sha256(listing.encode()).hexdigest()


def machine() -> dict[str, Any]:
    """The host, its CPU, the threads torch uses, the GPU: kernels and reduction orders (the last digits of a
    perplexity) may differ between them."""
    import torch

    info = {"host": platform.node(), "arch": platform.machine(), "cpu": cpu_name(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cache_key(fingerprint: str, evaluation: dict[str, Any], perplexity: dict[str, Any], model: dict[str, Any]
              ) -> dict[str, Any]:
    """What the deterministic figures depend on: the source, the evaluation text, the perplexity settings
    (seq_len, max_windows, batch_size), dtype and device, the machine's kernels, the library versions."""
    versions = library_versions()
    return {"schema": CACHE_SCHEMA, "source": fingerprint, "evaluation": evaluation, "perplexity": perplexity,
            "model": model, "machine": machine(),
            "versions": {name: versions.get(name) for name in ("llm-sculpt", "torch", "transformers", "python")}}


def cache_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_root() / CACHE_DIR / f"{digest[:32]}.json"


def deterministic(measured: dict[str, Any]) -> dict[str, Any]:
    """The figures of `measured` (the shape `measure_source` gives) that the cache may hold; nothing else."""
    return {**{key: measured[key] for key in FIGURES if key in measured},
            "by_backend": {name: {key: figures[key] for key in BACKEND_FIGURES if key in figures}
                           for name, figures in (measured.get("by_backend") or {}).items()}}


def load(key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached deterministic figures for `key` with where and when they were made, or None."""
    path = cache_file(key)
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: measure again (and overwrite it)
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("source"), dict):
        return None
    figures = deterministic(entry["source"])
    complete = (set(figures) == {*FIGURES, "by_backend"} and "torch" in figures["by_backend"]
                and all(set(f) == set(BACKEND_FIGURES) for f in figures["by_backend"].values()))
    if not complete:
        return None  # incomplete: measure again (and overwrite it)
    return {**figures, "cache": {"file": str(path), "measured_at": entry.get("measured_at"), "from_cache": True,
                                 "figures": [*FIGURES, *BACKEND_FIGURES]}}


def save(key: dict[str, Any], measured: dict[str, Any]) -> Path:
    """Store the deterministic figures of `measured` (timings and memory are dropped) under `key`."""
    path = cache_file(key)
    # readers see the old entry or the new one, never half of one
    atomic_write_json(path, {"key": key, "measured_at": utc_now(), "source": deterministic(measured)}, indent=1)
    return path
