"""`recipe.yaml` at the root of a version: the recipe the run applied, as a file `sculpt run` takes back.

The manifest's `recipe` field is the truth; this copy is written when the version is created and again
when a stage re-run with settings of its own changes that recipe (`Artifact.set_recipe`), and `verify` checks
that it still says the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..paths import atomic_write_text

RECIPE_NAME = "recipe.yaml"
_HEADER = ("# The recipe this artifact version was made with (the same as manifest.json's \"recipe\").\n"
           "# Replay it with `sculpt run recipe.yaml --new`.\n")


def write_recipe_copy(version_dir: Path, recipe: dict[str, Any]) -> None:
    text = _HEADER + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    atomic_write_text(version_dir / RECIPE_NAME, text)


def recipe_copy_problems(version_dir: Path, recipe: dict[str, Any]) -> list[str]:
    """Why `recipe.yaml` does not match the manifest's recipe (empty when it does, or when none was recorded)."""
    path = version_dir / RECIPE_NAME
    if not recipe:
        return [f"{RECIPE_NAME}: extra file, the manifest records no recipe"] if os.path.lexists(path) else []
    if not path.is_file() or path.is_symlink():
        return [f"{RECIPE_NAME}: missing (the copy of the manifest's recipe written when the version was created)"]
    try:
        copy = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return [f"{RECIPE_NAME}: not valid YAML any more (it was edited)"]
    if copy != recipe:
        return [f"{RECIPE_NAME}: differs from the manifest's recipe (it was edited)"]
    return []
