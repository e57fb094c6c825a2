"""The stage registry: stages by name, imported when they run, and the one-line error of a missing extra."""

import sys

import pytest

from pipeline import stages
from pipeline.errors import SculptError
from pipeline.stages import EXTRAS, STAGE_NAMES, STAGES, MissingExtra, load_stage, needs_extra

INSTALL = "pip install 'llm-sculpt[onnx]'"


def test_stages_are_in_pipeline_order_and_each_module_names_itself():
    assert STAGE_NAMES == ("search", "reform", "slice", "export", "build", "validate")
    assert load_stage("slice").NAME == "slice"
    assert {name for name, extra in STAGES.items() if extra} == {"export", "build"}


def test_an_unknown_stage_is_named_with_the_choices():
    with pytest.raises(SculptError, match="unknown stage.*choose from search"):
        load_stage("bake")


def test_a_missing_module_of_the_extra_fails_up_front_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingExtra) as raised:
        load_stage("export")
    message = str(raised.value)
    assert "stage export needs" in message and "onnxscript" in message and INSTALL in message and "\n" not in message
    assert load_stage("validate").NAME == "validate"  # the base install's stages load all the same


@pytest.fixture()
def extra_installed(monkeypatch):
    """As if the onnx extra were installed (so only what happens inside the block counts)."""
    monkeypatch.setattr(stages, "missing_modules", lambda extra: [])


def test_a_module_of_the_extra_missing_at_run_time_becomes_the_same_error(extra_installed):
    with pytest.raises(MissingExtra, match="onnxruntime"), needs_extra("stage export", "onnx"):
        raise ModuleNotFoundError("No module named 'onnxruntime.capi'", name="onnxruntime.capi")


def test_any_other_missing_module_stays_a_bug(extra_installed):
    with pytest.raises(ModuleNotFoundError), needs_extra("stage export", "onnx"):
        raise ModuleNotFoundError("No module named 'nonsense'", name="nonsense")


def test_the_extra_lists_what_pyproject_installs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from tests import REPO_ROOT

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    names = {spec.split(">")[0].split("=")[0].split("[")[0].strip() for spec in declared}
    assert names == set(EXTRAS["onnx"])
