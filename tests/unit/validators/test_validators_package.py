"""`import validators` must be this repo's package, never PyPI's unrelated `validators`."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from tests import REPO_ROOT

REPO = REPO_ROOT


def test_validators_is_our_package():
    import validators

    assert Path(validators.__file__).resolve().parent == REPO / "validators"


def test_no_distribution_named_validators_is_installed():
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("validators")
