"""`summary`: a terminal-sized text view of a version. Reading is `summary`; formatting is pure."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from .manifest import PIPELINE, Manifest, StageRecord, read_manifest

_RECIPE_ITEMS = 12
_METRIC_ITEMS = 6


def summary(path: str | os.PathLike) -> str:
    """The summary of the version at `path` (a SculptError when it is not an artifact)."""
    return format_summary(read_manifest(path), location=str(Path(path)))


def format_summary(manifest: Manifest, location: str | None = None) -> str:
    """A multi-line summary of `manifest`: source, recipe, one row per stage, sizes, content hash."""
    files = [out for stage in manifest.stages if stage.status == "done" for out in stage.outputs.values()]
    versions = manifest.versions
    libraries = ", ".join(f"{name} {versions[name]}" for name in ("torch", "transformers") if name in versions)
    lines = [
        f"llm-sculpt artifact {manifest.version}" + (f"  ({location})" if location else ""),
        _field("created", f"{manifest.created}  by llm-sculpt {manifest.llm_sculpt_version}"
                          + (f" ({libraries})" if libraries else "")),
        _field("source", _source(manifest)),
        _field("recipe", _recipe(manifest.recipe)),
        _field("outputs", f"{len(files)} files, {human_bytes(sum(out.bytes for out in files))}"),
        _field("content", f"sha256 {manifest.content_hash}"),
        "",
        *_stage_table(manifest),
    ]
    return "\n".join(lines)


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _field(label: str, text: str) -> str:
    indent = " " * 12
    return textwrap.fill(text, width=100, initial_indent=f"  {label:<10}", subsequent_indent=indent,
                         break_on_hyphens=False)


def _source(manifest: Manifest) -> str:
    source = manifest.source
    text = f"{source.kind} {source.id}"
    if source.revision:
        text += f" @ {source.revision}"
    if source.sha256:
        text += f"  sha256 {source.sha256[:16]}…"
    extra = source.model_extra or {}
    if extra:
        text += "  (" + ", ".join(f"{key}={_value(value)}" for key, value in extra.items()) + ")"
    return text


def _recipe(recipe: dict[str, Any]) -> str:
    items = [f"{key}={_value(value)}" for key, value in _flatten(recipe)]
    if not items:
        return "(none recorded)"
    more = len(items) - _RECIPE_ITEMS
    return "  ".join(items[:_RECIPE_ITEMS]) + (f"  (+{more} more)" if more > 0 else "")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(_value(item) for item in value[:4]) + (",…]" if len(value) > 4 else "]")
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _stage_table(manifest: Manifest) -> list[str]:
    names = [*PIPELINE, *(stage.name for stage in manifest.stages if stage.name not in PIPELINE)]
    rows = [("stage", "status", "wall", "size", "details")]
    rows += [_stage_row(name, manifest.record(name)) for name in names]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return [("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]).rstrip()
            for row in rows]


def _stage_row(name: str, record: StageRecord | None) -> tuple[str, str, str, str, str]:
    if record is None:
        return (name, "not run", "-", "-", "")
    if record.status == "done":
        size = human_bytes(sum(out.bytes for out in record.outputs.values()))
        scalars = [(key, value) for key, value in record.metrics.items() if not isinstance(value, (dict, list))]
        details = "  ".join(f"{key}={_value(value)}" for key, value in scalars[:_METRIC_ITEMS])
        if len(scalars) > _METRIC_ITEMS:
            details += f"  (+{len(scalars) - _METRIC_ITEMS} more)"
    else:
        size, details = "-", record.reason if record.status == "skipped" else record.error
    wall = "-" if record.status == "skipped" else human_seconds(record.wall_s)
    return (name, record.status, wall, size, details or "")
