"""Version directory names: `v0001` … `v9999`, then `vx10000`, `vxx100000`, … so names sort as numbers.

Past 9999 a plain `v10000` would sort before `v9999` as a string. Each extra digit instead adds
one `x` after the `v`; a letter sorts after every digit (in byte order and in the usual `ls`
locales), and within one width the digits are equal-length, so string order is numeric order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SculptError

MANIFEST_NAME = "manifest.json"
_WIDTH = 4
_NAME = re.compile(r"v(x*)(\d+)")


def version_name(number: int) -> str:
    """The directory name of version `number` (1 → `v0001`, 12345 → `vx12345`)."""
    if number < 1:
        raise ValueError(f"artifact versions start at 1, got {number}")
    digits = str(number)
    if len(digits) <= _WIDTH:
        return f"v{number:0{_WIDTH}d}"
    return "v" + "x" * (len(digits) - _WIDTH) + digits


def parse_version(name: str) -> int | None:
    """The number a version directory name stands for, or None when `name` is not one."""
    match = _NAME.fullmatch(name)
    if not match:
        return None
    number = int(match.group(2))
    # Only the canonical spelling counts, so `v01`, `v00001` or `vx0001` never alias a real version.
    return number if number >= 1 and version_name(number) == name else None


def _numbered(root: Path) -> list[tuple[int, Path]]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise SculptError(f"{root} is a file, not a directory: pass a directory to hold artifact versions") from None
    found = ((parse_version(entry.name), Path(entry.path)) for entry in entries)
    return sorted((number, path) for number, path in found if number is not None)


def list_versions(root: str | os.PathLike) -> list[Path]:
    """The complete versions under `root` (those with a manifest), oldest first."""
    return [path for _, path in _numbered(Path(root)) if (path / MANIFEST_NAME).is_file()]


def latest_version(root: str | os.PathLike) -> Path | None:
    """The newest complete version under `root`, or None when there is none."""
    versions = list_versions(root)
    return versions[-1] if versions else None


def make_version_dir(root: str | os.PathLike) -> Path:
    """Create the next free version directory under `root`; never reuses or overwrites one.

    `os.mkdir` is atomic: of two concurrent creators only one gets a name, the other re-scans
    and takes the next. A directory left empty by a crashed creator still holds its number.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SculptError(f"{root} is a file, not a directory: pass a directory to hold artifact versions") from None
    except PermissionError:
        raise SculptError(f"cannot create {root}: permission denied; choose a writable artifacts directory") from None
    while True:
        numbered = _numbered(root)
        path = root / version_name((numbered[-1][0] if numbered else 0) + 1)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue  # lost the race for this number: look again
        except PermissionError:
            raise SculptError(f"cannot create {path}: permission denied; "
                              f"choose a writable artifacts directory") from None
