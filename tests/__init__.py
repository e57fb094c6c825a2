"""The test suite: unit/ (tiny random models, seconds; mirrors the package tree), integration/ (the real SmolLM2)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout the tests run in
