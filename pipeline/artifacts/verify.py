"""`verify`: re-check a version against its manifest; every problem is one line naming a path."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SculptError
from ..paths import sha256_file
from .hashing import content_hash
from .manifest import PIPELINE, Manifest, read_manifest
from .recipe_copy import recipe_copy_problems


def verify(path: str | os.PathLike) -> list[str]:
    """Problems found in the version at `path`; an empty list means it is intact."""
    directory = Path(path)
    try:
        manifest = read_manifest(directory)
    except SculptError as exc:
        return [str(exc)]
    return [*_changed_outputs(directory, manifest), *_content_hash(manifest), *_unrecorded(directory, manifest),
            *_stale_inputs(manifest), *recipe_copy_problems(directory, manifest.recipe)]


def _changed_outputs(directory: Path, manifest: Manifest) -> list[str]:
    problems = []
    for stage in manifest.stages:
        if stage.status != "done":
            continue
        for rel, out in stage.outputs.items():
            file = directory / rel
            if not file.is_file():
                problems.append(f"{rel}: missing (stage {stage.name} wrote it)")
            elif (size := file.stat().st_size) != out.bytes:
                problems.append(f"{rel}: changed ({size} bytes on disk, {out.bytes} recorded)")
            elif sha256_file(file) != out.sha256:
                problems.append(f"{rel}: changed (its sha256 differs from the one recorded)")
    return problems


def _content_hash(manifest: Manifest) -> list[str]:
    if content_hash(manifest.listing()) == manifest.content_hash:
        return []
    return ["manifest.json: content_hash does not match the recorded outputs (the manifest was edited)"]


def _unrecorded(directory: Path, manifest: Manifest) -> list[str]:
    """Stage directories with files no `done` record lists (a partial write, or something added later)."""
    problems = []
    records = {stage.name: stage for stage in manifest.stages}
    for name in sorted(set(PIPELINE) | set(records)):
        stage_dir = directory / name
        if not os.path.lexists(stage_dir):
            continue
        record = records.get(name)
        if record is None or record.status != "done":
            state = "no record" if record is None else f"a {record.status} record"
            problems.append(f"{name}/: exists but stage {name} has {state} (left by an interrupted run): "
                            f"re-run {name} or delete the directory")
            continue
        if not stage_dir.is_dir() or stage_dir.is_symlink():
            continue  # its recorded files are reported missing above
        for current, dirnames, filenames in os.walk(stage_dir):
            for entry in sorted([*dirnames, *filenames]):
                entry_path = Path(current, entry)
                rel = entry_path.relative_to(directory).as_posix()
                if entry_path.is_symlink():
                    problems.append(f"{rel}: a symlink, not a recorded file")
                elif entry in filenames and rel not in record.outputs:
                    problems.append(f"{rel}: extra file, not recorded by stage {name}")
    return problems


def _stale_inputs(manifest: Manifest) -> list[str]:
    """Done stages whose inputs no longer match what the earlier stage now records."""
    produced = {rel: out.sha256 for stage in manifest.stages if stage.status == "done"
                for rel, out in stage.outputs.items()}
    return [f"stage {stage.name}: its input {rel} changed or is gone since it ran: re-run {stage.name}"
            for stage in manifest.stages if stage.status == "done"
            for rel, sha in stage.inputs.items() if produced.get(rel) != sha]
