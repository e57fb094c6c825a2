"""Shared fixtures: a tiny model of every supported family, and a stray-file guard."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.factories import FAMILIES, tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session", autouse=True)
def no_stray_files():
    """Tests write only under tmp_path: the checkout must look the same afterwards."""
    def status() -> str:
        try:
            return subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    before = status()
    yield
    after = status()
    new = sorted(set(after.splitlines()) - set(before.splitlines()))
    new = [line for line in new if "__pycache__" not in line and ".pytest_cache" not in line]
    assert not new, f"tests left stray files in the checkout: {new}"
