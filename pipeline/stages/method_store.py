"""Folders behind a method's stores (`pipeline.compress.registry.Store`): its outputs in the artifact, its resume
state, and the cache shared by every run on this machine.

A name's suffix picks the form: `.json` (one JSON value), `.jsonl` (a list of rows, one JSON line each) or
`.pt` (tensors, `torch.save`). A name may hold a `/` (a sub-folder). Writes are atomic; a file that cannot be
read loads as None, so a damaged checkpoint or cache entry costs a recomputation, never a failed run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from ..paths import atomic_write_bytes, atomic_write_text


class FolderStore:
    """A `Store` backed by one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    def load(self, name: str) -> Any | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            if name.endswith(".pt"):
                return torch.load(path, weights_only=True)
            text = path.read_text()
            if name.endswith(".jsonl"):
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            return json.loads(text)
        except (OSError, ValueError, RuntimeError, EOFError):
            return None

    def save(self, name: str, value: Any) -> None:
        path = self.path(name)
        if name.endswith(".pt"):
            buffer = io.BytesIO()
            torch.save(value, buffer)
            atomic_write_bytes(path, buffer.getvalue())
        elif name.endswith(".jsonl"):
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in value))
        elif name.endswith(".json"):
            atomic_write_text(path, json.dumps(value, indent=1) + "\n")
        else:
            raise ValueError(f"store name {name!r} has no known suffix (.json, .jsonl, .pt)")
