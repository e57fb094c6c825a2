"""One versioned artifact directory: create/open it, run stages atomically, skip them, resume them."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import SculptError
from ..paths import fsync_dir, sha256_file
from .hashing import content_hash, relative_name, tree_files
from .locking import WriterLock
from .recipe_copy import write_recipe_copy
from .manifest import (Manifest, OutputFile, SourceModel, StageRecord, library_versions, llm_sculpt_version,
                       read_manifest, to_jsonable, utc_now, write_manifest)
from .versions import make_version_dir

TEMP_PREFIX = ".tmp-"
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


@dataclass
class StageRun:
    """What a stage body gets: a private directory to write into and a dict of metrics to fill."""

    name: str
    dir: Path  # temporary, inside the version directory; renamed to `final_dir` on success
    final_dir: Path
    options: dict[str, Any]
    inputs: dict[str, str]  # relative path → sha256 of what the stage reads
    metrics: dict[str, Any] = field(default_factory=dict)


class Artifact:
    """A version directory (`ROOT/v0003`) and its manifest; the manifest on disk is the truth.

    Every change happens under the version's writer lock (see locking.py).
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = WriterLock(path)

    @classmethod
    def create(cls, root: str | os.PathLike, *, source: Mapping[str, Any],
               recipe: Mapping[str, Any] | None = None) -> Artifact:
        """A new version under `root` (`v0001` if it is the first), with its manifest (and `recipe.yaml`) written."""
        try:
            source_model = SourceModel.model_validate(to_jsonable(dict(source), "source"))
        except ValidationError as exc:
            raise SculptError(f"invalid source model description: {exc.errors()[0]['msg']} "
                              f"(need id and kind: gguf, dir or hub)") from None
        recipe_data = to_jsonable(dict(recipe or {}), "recipe")
        artifact = cls(make_version_dir(root))
        now = utc_now()
        manifest = Manifest(version=artifact.path.name, created=now, updated=now,
                            llm_sculpt_version=llm_sculpt_version(), source=source_model, recipe=recipe_data,
                            versions=library_versions(), stages=[], content_hash=content_hash([]))
        with artifact._lock.hold("create"):
            if recipe_data:
                write_recipe_copy(artifact.path, recipe_data)  # before the manifest: a version is complete with it
            write_manifest(artifact.path, manifest)
        return artifact

    def set_recipe(self, recipe: Mapping[str, Any]) -> None:
        """Record `recipe` as the one this version is made with, in the manifest and its `recipe.yaml` copy: a stage
        re-run with settings of its own (`sculpt reform V --reform-samples 512`) changes what made the version."""
        recipe_data = to_jsonable(dict(recipe), "recipe")
        with self._lock.hold("recipe"):
            manifest = self.manifest
            if recipe_data == manifest.recipe:
                return
            write_recipe_copy(self.path, recipe_data)
            write_manifest(self.path, manifest.model_copy(update={"recipe": recipe_data, "updated": utc_now()}))

    @classmethod
    def open(cls, path: str | os.PathLike) -> Artifact:
        """An existing version; temp dirs a killed process left behind are removed."""
        artifact = cls(Path(path))
        read_manifest(artifact.path)  # fail early, with the fix, on anything that is not an artifact
        artifact._clean_stale()
        return artifact

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r})"

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> Manifest:
        return read_manifest(self.path)

    def record(self, name: str) -> StageRecord | None:
        return self.manifest.record(name)

    def stage_dir(self, name: str) -> Path:
        return self.path / _check_name(name)

    def require(self, name: str) -> Path:
        """The directory of stage `name`, or a SculptError saying to run it first."""
        record = self.record(name)
        if record is None or record.status != "done":
            state = "has not run" if record is None else f"is {record.status}: {record.error or record.reason}"
            raise SculptError(f"stage {name} {state} in {self.path}: run `{name}` first")
        return self.stage_dir(name)

    @contextmanager
    def stage(self, name: str, *, options: Mapping[str, Any] | None = None,
              inputs: Iterable[str | os.PathLike] = ()) -> Iterator[StageRun]:
        """Run a stage atomically: write into `run.dir`; on success it becomes `VERSION/<name>/`.

        An exception records `failed` (and removes any older `<name>/`), an interrupt records
        nothing; either way the temp dir goes and the exception propagates.
        """
        _check_name(name)
        options = to_jsonable(dict(options or {}), f"options of stage {name}")
        with self._lock.hold(f"stage {name}"):
            versions = library_versions()
            started, clock = utc_now(), time.perf_counter()
            input_hashes: dict[str, str] = {}
            temp: Path | None = None
            run: StageRun | None = None
            try:
                input_hashes = self._hash_inputs(name, inputs)
                temp = self._make_temp(name)
                run = StageRun(name, temp, self.path / name, options, input_hashes)
                yield run
                outputs = {f"{name}/{relative_name(path, temp)}": _output(path) for path in tree_files(temp)}
                record = StageRecord(name=name, status="done", started=started, finished=utc_now(),
                                     wall_s=_seconds(clock), options=options, inputs=input_hashes, outputs=outputs,
                                     metrics=to_jsonable(run.metrics, f"metrics of stage {name}"), versions=versions)
                self._install(temp, record)
            except Exception as exc:
                if temp is not None:
                    _remove(temp)
                with suppress(Exception):  # the original error matters more than a failed bookkeeping write
                    failed = StageRecord(name=name, status="failed", error=_one_line(exc), started=started,
                                         finished=utc_now(), wall_s=_seconds(clock), options=options,
                                         inputs=input_hashes, metrics=_best_effort(run.metrics if run else {}),
                                         versions=versions)
                    self._settle(failed)
                raise
            except BaseException:  # KeyboardInterrupt, SystemExit, GeneratorExit: do as little as possible
                if temp is not None:
                    _remove(temp)
                raise

    def skip(self, name: str, reason: str, *, options: Mapping[str, Any] | None = None) -> StageRecord:
        """Record stage `name` as skipped, with the reason; any older `<name>/` is removed."""
        _check_name(name)
        if not reason or not reason.strip():
            raise ValueError("skip() needs a reason a user can read")
        now = utc_now()
        record = StageRecord(name=name, status="skipped", reason=reason.strip(), started=now, finished=now,
                             wall_s=0.0, options=to_jsonable(dict(options or {}), f"options of stage {name}"),
                             versions=library_versions())
        with self._lock.hold(f"skip {name}"):
            self._settle(record)
        return record

    def is_current(self, name: str, options: Mapping[str, Any] | None = None,
                   inputs: Iterable[str | os.PathLike] = ()) -> bool:
        """True when `name` is done with these options and inputs and its files are as recorded."""
        record = self.record(_check_name(name))
        if record is None or record.status != "done":
            return False
        if record.options != to_jsonable(dict(options or {}), f"options of stage {name}"):
            return False
        try:
            if self._hash_inputs(name, inputs) != record.inputs:
                return False
        except SculptError:
            return False
        stage_dir = self.path / name
        try:
            on_disk = {relative_name(path, self.path): path for path in tree_files(stage_dir)}
        except SculptError:  # a symlink crept in
            return False
        if on_disk.keys() != record.outputs.keys():
            return False
        if any(on_disk[rel].stat().st_size != out.bytes for rel, out in record.outputs.items()):
            return False  # sizes first: a cheap way to catch most changes before hashing GBs
        return all(sha256_file(on_disk[rel]) == out.sha256 for rel, out in record.outputs.items())

    def _hash_inputs(self, name: str, inputs: Iterable[str | os.PathLike]) -> dict[str, str]:
        """sha256 of each input file; each must be an unchanged output of a `done` earlier stage."""
        manifest = self.manifest
        produced = {rel: (stage.name, out) for stage in manifest.stages if stage.status == "done"
                    for rel, out in stage.outputs.items()}
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        hashes: dict[str, str] = {}
        for given in inputs:
            rel = self._relative(Path(given))
            if rel == name or rel.startswith(f"{name}/"):
                raise SculptError(f"stage {name} lists its own output {rel} as an input: "
                                  f"inputs are files earlier stages wrote")
            files = [rel] if rel in produced else sorted(key for key in produced if key.startswith(f"{rel}/"))
            if not files:
                raise SculptError(f"input {rel} of stage {name} is not an output of a completed stage in "
                                  f"{self.path}: run the stage that writes it ({rel.split('/')[0]}) first")
            for file in files:
                producer, out = produced[file]
                path = self.path / file
                if not path.is_file():
                    raise SculptError(f"input {file} of stage {name} is missing from {self.path}: "
                                      f"re-run {producer}")
                sha = sha256_file(path) if path.stat().st_size == out.bytes else None
                if sha != out.sha256:
                    raise SculptError(f"input {file} of stage {name} changed since {producer} wrote it: "
                                      f"run `sculpt verify {self.path}`, then re-run {producer}")
                hashes[file] = sha
        return dict(sorted(hashes.items()))

    def _relative(self, given: Path) -> str:
        if given.is_absolute():
            try:
                given = given.resolve().relative_to(self.path.resolve())
            except ValueError:
                raise SculptError(f"input {given} is outside the artifact {self.path}: a stage reads only "
                                  f"files earlier stages wrote into it") from None
        rel = given.as_posix().strip("/")
        if not rel or rel == "." or ".." in given.parts:
            raise SculptError(f"input {given!s} is not a path inside the artifact {self.path}: "
                              f"pass e.g. slice/model")
        return rel

    def _install(self, temp: Path, record: StageRecord) -> None:
        """Swap `temp` into `VERSION/<name>/`, then record it done (the record comes last, always)."""
        final = self.path / record.name
        manifest = self.manifest
        if manifest.record(record.name) is not None:
            # Withdraw the old record first: while the directories swap, no record claims either one.
            write_manifest(self.path, manifest.with_stage(None, drop=record.name))
        aside = self._set_aside(final)
        os.rename(temp, final)
        fsync_dir(self.path)
        write_manifest(self.path, self.manifest.with_stage(record))
        if aside is not None:
            _remove(aside)

    def _settle(self, record: StageRecord) -> None:
        """Record a stage that has no outputs (failed, skipped), then remove any older directory of it."""
        write_manifest(self.path, self.manifest.with_stage(record))
        aside = self._set_aside(self.path / record.name)
        if aside is not None:
            _remove(aside)

    def _set_aside(self, final: Path) -> Path | None:
        if not os.path.lexists(final):
            return None
        aside = self.path / f"{TEMP_PREFIX}replaced-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, aside)  # a rename is instant; deleting GBs happens after the new record is safe
        return aside

    def _make_temp(self, name: str) -> Path:
        while True:  # os.mkdir (not mkdtemp) so the directory gets the user's umask, not 0700
            temp = self.path / f"{TEMP_PREFIX}{name}-{secrets.token_hex(4)}"
            try:
                os.mkdir(temp)
                return temp
            except FileExistsError:
                continue

    def _clean_stale(self) -> None:
        """Remove `.tmp-*` left by a killed writer; skipped while another writer holds the lock."""
        try:
            with self._lock.hold("clean"):
                for entry in os.scandir(self.path):
                    if entry.name.startswith(TEMP_PREFIX):
                        _remove(Path(entry.path))
        except SculptError:
            pass  # a live writer holds the lock: its temp dirs are not stale


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
        raise ValueError(f"stage name {name!r} must be lowercase letters, digits, '-' or '_', e.g. 'slice'")
    return name


def _output(path: Path) -> OutputFile:
    return OutputFile(sha256=sha256_file(path, fsync=True), bytes=path.stat().st_size)


def _seconds(clock: float) -> float:
    return round(time.perf_counter() - clock, 3)


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= 500 else text[:499] + "…"


def _best_effort(metrics: dict[str, Any]) -> dict[str, Any]:
    try:
        return to_jsonable(metrics, "metrics")
    except (TypeError, ValueError):
        return {}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()
