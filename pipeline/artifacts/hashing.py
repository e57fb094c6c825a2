"""File hashes, in chunks (weights can be many GB), and the artifact's content hash."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import SculptError

CHUNK_BYTES = 8 << 20


def sha256_file(path: str | os.PathLike, *, fsync: bool = False) -> str:
    """The hex sha256 of a file, read in chunks; `fsync=True` also flushes it to disk."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
        if fsync:
            os.fsync(file.fileno())
    return digest.hexdigest()


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


def fsync_dir(directory: Path) -> None:
    """Make renames inside `directory` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
