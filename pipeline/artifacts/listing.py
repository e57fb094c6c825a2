"""`sculpt list`: one row per version under a root, with its key metrics and status, oldest first.

The metrics come from the stage records: `search.decoder_ratio`, `validate.params` (else
`slice.total_params`), `validate.ppl`, `validate.ppl_increase_pct`, `validate.decode_speedup`,
and the gates' verdict (`validate.gates_passed`, `validate.gates`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SculptError
from .manifest import Manifest, read_manifest
from .versions import list_versions

COLUMNS = (("version", "version"), ("created", "created"), ("ratio", "ratio"), ("params", "params"),
           ("ppl", "ppl"), ("ppl_change_pct", "change"), ("speedup", "speed-up"), ("status", "status"),
           ("content_hash", "content"))


def version_rows(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Key metrics of every complete version under `root` (a damaged manifest gives a 'damaged' row)."""
    rows = []
    for path in list_versions(root):
        try:
            manifest = read_manifest(path)
        except SculptError as exc:
            rows.append({"version": path.name, "path": str(path), "status": "damaged", "error": str(exc)})
            continue
        rows.append(version_row(manifest, path))
    return rows


def version_row(manifest: Manifest, path: Path) -> dict[str, Any]:
    search, slice_, validate = (_metrics(manifest, name) for name in ("search", "slice", "validate"))
    ratio = search.get("decoder_ratio", manifest.recipe.get("search", {}).get("ratio"))
    return {"version": manifest.version, "path": str(path), "created": manifest.created,
            "ratio": ratio, "params": validate.get("params", slice_.get("total_params")), "ppl": validate.get("ppl"),
            "ppl_change_pct": validate.get("ppl_increase_pct"), "speedup": validate.get("decode_speedup"),
            "status": version_status(manifest), "content_hash": manifest.content_hash}


def version_status(manifest: Manifest) -> str:
    """passed | gates failed | validated (no gates set) | failed: STAGE | incomplete"""
    failed = [stage.name for stage in manifest.stages if stage.status == "failed"]
    if failed:
        return f"failed: {', '.join(failed)}"
    record = manifest.record("validate")
    if record is None or record.status != "done":
        return "incomplete"
    if record.metrics.get("gates_passed") is False:
        return "gates failed"
    return "passed" if record.metrics.get("gates") else "validated"


def format_listing(rows: list[dict[str, Any]]) -> str:
    table = [tuple(title for _, title in COLUMNS)] + [tuple(_cell(key, row.get(key)) for key, _ in COLUMNS)
                                                        for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def _metrics(manifest: Manifest, name: str) -> dict[str, Any]:
    record = manifest.record(name)
    return record.metrics if record is not None and record.status == "done" else {}


def _cell(key: str, value: Any) -> str:
    if value is None or isinstance(value, str) and value in ("nan", "inf"):
        return "-" if value is None else value
    if key == "created":
        return str(value)[:16].replace("T", " ")
    if key == "ratio":
        return f"{value:.3f}"
    if key == "params":
        return f"{value / 1e6:.1f} M"
    if key == "ppl":
        return f"{value:.3f}"
    if key == "ppl_change_pct":
        return f"{value:+.1f} %"
    if key == "speedup":
        return f"{value:.2f}x"
    if key == "content_hash":
        return str(value)[:12]
    return str(value)
