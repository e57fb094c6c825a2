"""The artifact's files, their recorded names and its content hash (file hashes: `pipeline.paths`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import SculptError


def tree_files(directory: Path) -> list[Path]:
    """Every regular file under `directory`, sorted; a symlink is an error (artifacts ship whole)."""
    files = []
    for current, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(current, name)
            if path.is_symlink():
                raise SculptError(f"{path} is a symlink: a stage must write real files so the artifact "
                                  f"can be copied and shipped on its own; copy the target instead")
        files.extend(Path(current, name) for name in sorted(filenames))
    return sorted(files)


def relative_name(path: Path, base: Path) -> str:
    """`path` relative to `base`, with forward slashes (the manifest's spelling)."""
    name = path.relative_to(base).as_posix()
    if "\n" in name or "\r" in name:
        raise SculptError(f"{path}: file names with line breaks cannot be recorded; rename the file")
    return name


def content_hash(listing: Iterable[tuple[str, str]]) -> str:
    """sha256 over `<sha256>  <path>\\n` lines (sha256sum's format), sorted by path."""
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(listing))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()

