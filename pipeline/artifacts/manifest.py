"""`manifest.json`: the schema (see docs/manifest.md), reading it, and writing it atomically."""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from enum import Enum
from functools import lru_cache
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import SculptError
from ..paths import atomic_write_text
from .hashing import content_hash
from .versions import MANIFEST_NAME

SCHEMA = "llm-sculpt/manifest"
SCHEMA_VERSION = 1
PIPELINE = ("search", "reform", "slice", "export", "kit", "build", "validate")

# Library name in the manifest → distributions that provide it, first installed one wins.
_LIBRARIES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "safetensors": ("safetensors",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"),
}


class OutputFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class SourceModel(BaseModel):
    """The model a run started from; callers may add their own keys (family, dtype, …)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    kind: Literal["gguf", "dir", "hub"]
    revision: str | None = None
    sha256: str | None = None


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    status: Literal["done", "skipped", "failed"]
    reason: str | None = None
    error: str | None = None
    started: str
    finished: str
    wall_s: float = Field(ge=0)
    options: dict[str, Any] = {}
    inputs: dict[str, str] = {}
    outputs: dict[str, OutputFile] = {}
    metrics: dict[str, Any] = {}
    versions: dict[str, str] = {}

    @model_validator(mode="after")
    def _status_fields(self) -> StageRecord:
        if self.status == "skipped" and not self.reason:
            raise ValueError("a skipped stage needs a reason")
        if self.status == "failed" and not self.error:
            raise ValueError("a failed stage needs an error")
        if self.status != "done" and self.outputs:
            raise ValueError(f"a {self.status} stage has no outputs")
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_id: Literal["llm-sculpt/manifest"] = Field(SCHEMA, alias="schema")
    schema_version: Literal[1] = SCHEMA_VERSION
    version: str
    created: str
    updated: str
    llm_sculpt_version: str
    source: SourceModel
    recipe: dict[str, Any] = {}
    versions: dict[str, str] = {}
    stages: list[StageRecord] = []
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")

    def record(self, name: str) -> StageRecord | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    def listing(self) -> list[tuple[str, str]]:
        """(path, sha256) of every output of a `done` stage: what `content_hash` covers."""
        return [(name, out.sha256) for stage in self.stages if stage.status == "done"
                for name, out in stage.outputs.items()]

    def with_stage(self, record: StageRecord | None, *, drop: str | None = None) -> Manifest:
        """A copy with `record` in place of any record of the same name (or `drop` removed), in pipeline order."""
        name = record.name if record is not None else drop
        stages = [stage for stage in self.stages if stage.name != name]
        if record is not None:
            stages.append(record)
        order = {stage: index for index, stage in enumerate(PIPELINE)}
        stages.sort(key=lambda stage: order.get(stage.name, len(PIPELINE)))  # stable: others keep their order
        updated = self.model_copy(update={"stages": stages, "updated": utc_now()})
        return updated.model_copy(update={"content_hash": content_hash(updated.listing())})

    def to_json(self) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        data["source"] = {key: value for key, value in data["source"].items() if value is not None}
        for stage in data["stages"]:
            for key in ("reason", "error"):
                if stage[key] is None:
                    del stage[key]
        return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def llm_sculpt_version() -> str:
    try:
        from .. import __version__  # the code that is running, even from a checkout
        return __version__
    except ImportError:
        try:
            return metadata.version("llm-sculpt")
        except metadata.PackageNotFoundError:
            return "unknown"


@lru_cache(maxsize=1)
def _installed_libraries() -> tuple[tuple[str, str], ...]:
    found = [("python", platform.python_version())]
    for name, distributions in _LIBRARIES.items():
        for distribution in distributions:
            try:
                version = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
            found.append((name, version if distribution == name else f"{version} ({distribution})"))
            break
    return tuple(found)


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries that shape outputs, from package metadata (imports nothing)."""
    return {"llm-sculpt": llm_sculpt_version(), **dict(_installed_libraries())}


def to_jsonable(value: Any, what: str) -> Any:
    """`value` as plain JSON data: paths become strings, tuples/sets lists, models dicts."""
    def default(obj: Any) -> Any:
        if isinstance(obj, PurePath):
            return obj.as_posix()
        if isinstance(obj, Enum):
            return obj.value
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
            return obj.item()
        raise TypeError(f"{what}: {type(obj).__name__} is not JSON-serialisable; pass numbers, strings, lists or dicts")

    def finite(obj: Any) -> Any:  # strict JSON has no NaN/inf: keep them readable as strings
        if isinstance(obj, float) and not math.isfinite(obj):
            return str(obj)
        if isinstance(obj, dict):
            return {key: finite(item) for key, item in obj.items()}
        if isinstance(obj, list):
            return [finite(item) for item in obj]
        return obj

    return finite(json.loads(json.dumps(value, default=default)))


def parse_manifest(text: str, where: str) -> Manifest:
    """A manifest from its JSON text; a SculptError naming the problem when it is not a valid one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SculptError(f"{where} is not valid JSON ({exc.msg}, line {exc.lineno}): the artifact is damaged; "
                          f"re-run `sculpt run` or restore it from a copy") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SculptError(f"{where} is not an llm-sculpt manifest (its schema is not {SCHEMA!r}): "
                          f"pass a directory a `sculpt run` created")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SculptError(f"{where} has schema_version {version}, newer than this llm-sculpt reads "
                          f"({SCHEMA_VERSION}): upgrade llm-sculpt")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise SculptError(f"{where} does not match schema {SCHEMA} v{SCHEMA_VERSION} ({field}: {error['msg']}): "
                          f"the artifact is damaged; re-run `sculpt run` or restore it from a copy") from None


def read_manifest(version_dir: str | os.PathLike) -> Manifest:
    path = Path(version_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise SculptError(_not_an_artifact(Path(version_dir))) from None
    except UnicodeDecodeError:
        raise SculptError(f"{path} is not UTF-8 text: the artifact is damaged; re-run `sculpt run` "
                          f"or restore it from a copy") from None
    return parse_manifest(text, str(path))


def _not_an_artifact(path: Path) -> str:
    from .versions import latest_version  # a root of versions is the likely mix-up

    latest = latest_version(path) if path.is_dir() else None
    example = latest if latest is not None else Path("artifacts") / "v0003"
    return (f"{path} is not an llm-sculpt artifact (no {MANIFEST_NAME}): pass the directory a `sculpt run` "
            f"created, e.g. {example}")


def write_manifest(version_dir: Path, manifest: Manifest) -> None:
    """Replace `manifest.json` atomically: a reader sees the old or the new file, never half of one."""
    atomic_write_text(version_dir / MANIFEST_NAME, manifest.to_json(), fsync=True)
