"""The baseline a run is compared with: a previous artifact version's validate metrics (`--baseline PATH`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...artifacts import latest_version, read_manifest
from ...artifacts.versions import MANIFEST_NAME
from ...errors import SculptError

# measurement settings that must match for two perplexities to be comparable
COMPARABLE = (("evaluation", "sha256", "evaluation text"), ("seq_len", None, "validate.seq_len"),
              ("max_windows", None, "validate.max_windows"))


@dataclass(frozen=True)
class Baseline:
    path: Path  # the version directory
    version: str
    content_hash: str
    metrics: dict[str, Any]  # its validate stage's metrics
    measure: dict[str, Any]  # its validate stage's measurement options

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "version": self.version, "content_hash": self.content_hash}


def resolve(path: str | Path) -> Path:
    """A version directory, or the latest version under a root of versions."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    latest = latest_version(path) if path.is_dir() else None
    if latest is None:
        raise SculptError(f"baseline {path} is neither an artifact version nor a directory of versions: "
                          f"pass e.g. releases/v0003 or releases/")
    return latest


def load_baseline(path: str | Path) -> Baseline:
    version_dir = resolve(path)
    manifest = read_manifest(version_dir)
    record = manifest.record("validate")
    if record is None or record.status != "done" or "ppl" not in record.metrics:
        raise SculptError(f"baseline {version_dir} has no completed validate stage: pass an artifact that was "
                          f"validated, or run `sculpt validate {version_dir}` first")
    measure = record.options.get("measure", record.options)  # artifacts from before gates kept options flat
    return Baseline(version_dir, manifest.version, manifest.content_hash, dict(record.metrics),
                    dict(measure))


def comparability_problem(current: dict[str, Any], baseline: Baseline) -> str | None:
    """Why this run's perplexity cannot be compared with the baseline's, or None when it can."""
    for key, inner, what in COMPARABLE:
        mine, theirs = current.get(key), baseline.measure.get(key)
        if inner is not None:
            mine, theirs = (mine or {}).get(inner), (theirs or {}).get(inner)
        if mine != theirs:
            return (f"baseline {baseline.path} measured perplexity with another {what} "
                    f"({_short(theirs)} there, {_short(mine)} here): use the same evaluation corpus, "
                    f"validate.seq_len and validate.max_windows as the baseline")
    return None


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text
