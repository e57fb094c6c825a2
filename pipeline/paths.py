"""Files on disk: where llm-sculpt caches things, atomic writes, file hashes, the machine's CPU name.

The bottom layer: it imports nothing from llm-sculpt, so every other module may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_BYTES = 8 << 20  # weights can be many GB: hash them in chunks


def cache_root() -> Path:
    """Where dequantised GGUF models are cached: $SCULPT_CACHE_DIR, else ~/.cache/llm-sculpt."""
    explicit = os.environ.get("SCULPT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-sculpt"


def write_directory_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, a cache directory of files, written once: `write(staging)` fills a `.tmp-*` directory beside it,
    which is then renamed to `target`, so a reader never sees half of one. A failure removes the staging directory;
    when another process finished `target` meanwhile, its copy is used. `config.json` marks a finished one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        write(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Replace `path` atomically: a reader sees the old file or the new one, never half of one.

    The bytes go to a `.tmp-*` file in the same directory (created, with its parents, if missing),
    which is then renamed over `path`. `fsync=True` also flushes the file and the directory, so the
    new file survives a power cut once this returns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """`atomic_write_bytes` for text, encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, fsync: bool = False) -> None:
    """`obj` as JSON (and a final newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", fsync=fsync)


def fsync_dir(directory: str | os.PathLike) -> None:
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


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows, else "unknown"."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
