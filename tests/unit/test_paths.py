"""pipeline.paths: the cache root, atomic writes, file hashes and the CPU name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline import paths


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "explicit"))
    assert paths.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("SCULPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "llm-sculpt"


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_writes_replace_the_file_and_leave_nothing_else(tmp_path, fsync):
    target = tmp_path / "new" / "dir" / "out.json"
    paths.atomic_write_json(target, {"a": [1, 2]}, fsync=fsync)
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text().endswith("\n")
    paths.atomic_write_text(target, "é\n", fsync=fsync)
    assert target.read_bytes() == "é\n".encode("utf-8")
    paths.atomic_write_bytes(target, b"\x00\x01", fsync=fsync)
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        paths.atomic_write_json(target, {"not json": object()})  # fails before anything is written
    with pytest.raises(TypeError):
        paths.atomic_write_bytes(target, "not bytes")  # fails while writing the temporary file
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_sha256_file(tmp_path: Path):
    data = bytes(range(256)) * 40_000  # more than one chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert paths.sha256_file(path) == paths.sha256_file(path, fsync=True) == hashlib.sha256(data).hexdigest()


def test_cpu_name_is_a_name():
    assert isinstance(paths.cpu_name(), str) and paths.cpu_name().strip()


def test_a_cache_directory_is_written_whole_or_not_at_all(tmp_path):
    from pipeline.paths import write_directory_once

    def broken(staging):
        (staging / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_directory_once(tmp_path / "cache" / "model", broken)
    assert not list((tmp_path / "cache").iterdir())  # no half-written target, no staging left behind
    made = write_directory_once(tmp_path / "cache" / "model", lambda staging: (staging / "config.json").write_text("{}"))
    assert made == tmp_path / "cache" / "model" and [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]
