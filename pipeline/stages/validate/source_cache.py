"""A cache of the dense source model's measurements, so each run measures only the sculpted model.

Measuring the source again on every run is expensive (a full WikiText-2 pass of SmolLM2 is
~25 min on a small CPU), and its numbers depend only on the source, the evaluation text, the
settings, the machine and the library versions. Those make the key; an entry is one JSON file
under `<cache_root>/validate-source/`, written atomically. The report says when numbers came
from here.
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

CACHE_SCHEMA = 1
CACHE_DIR = "validate-source"


def checkpoint_fingerprint(directory: Path) -> str:
    """sha256 over the config and weight files of a checkpoint directory (what its numbers depend on)."""
    names = sorted(p for pattern in ("config.json", "*.safetensors", "*.bin", "tokenizer.json")
                   for p in Path(directory).glob(pattern))
    listing = "".join(f"{sha256_file(p)}  {p.name}\n" for p in names)
    return "files:" + hashlib.sha256(listing.encode()).hexdigest()


def machine() -> dict[str, Any]:
    """What timings depend on besides the settings: the host, its CPU, the threads torch uses, the GPU."""
    import torch

    info = {"host": platform.node(), "arch": platform.machine(), "cpu": cpu_name(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cache_key(fingerprint: str, evaluation: dict[str, Any], workload: dict[str, Any], model: dict[str, Any]
              ) -> dict[str, Any]:
    versions = library_versions()
    return {"schema": CACHE_SCHEMA, "source": fingerprint, "evaluation": evaluation, "workload": workload,
            "model": model, "machine": machine(),
            "versions": {name: versions.get(name) for name in ("llm-sculpt", "torch", "transformers", "python")}}


def cache_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_root() / CACHE_DIR / f"{digest[:32]}.json"


def load(key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached measurements for `key` with where and when they were made, or None."""
    path = cache_file(key)
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: measure again (and overwrite it)
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("source"), dict):
        return None
    return {**entry["source"], "cache": {"file": str(path), "measured_at": entry.get("measured_at"),
                                         "from_cache": True}}


def save(key: dict[str, Any], measurements: dict[str, Any]) -> Path:
    path = cache_file(key)
    # readers see the old entry or the new one, never half of one
    atomic_write_json(path, {"key": key, "measured_at": utc_now(), "source": measurements}, indent=1)
    return path
