"""Which backends validate measures: found lazily from the artifact's stages and the libraries installed."""

import subprocess
import sys
import types

import pytest

from pipeline.errors import SculptError
from pipeline.targets import BACKEND_NAMES
from tests import REPO_ROOT
from tests.factories import tiny_checkpoint
from validators.backends import BACKENDS, ModelFiles, open_runner, resolve_backends


@pytest.fixture()
def files(tmp_path):
    return ModelFiles(checkpoint=tiny_checkpoint(tmp_path / "model"))


def test_every_backend_name_has_a_backend():
    assert tuple(BACKENDS) == BACKEND_NAMES


def test_a_sliced_artifact_is_measured_with_torch_and_says_why_not_the_others(files):
    available, unavailable = resolve_backends("auto", files)
    assert available == ["torch"]
    assert "sculpt export" in unavailable["onnxruntime"] and "sculpt build" in unavailable["tensorrt"]


def test_without_onnxruntime_the_reason_is_the_install_command_not_the_export(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as in a base install
    _, unavailable = resolve_backends("auto", files)
    assert "pip install 'llm-sculpt[onnx]'" in unavailable["onnxruntime"]
    assert "sculpt export" not in unavailable["onnxruntime"]  # it could not run there either


def test_an_explicit_backend_that_cannot_run_is_an_error_naming_it(files):
    with pytest.raises(SculptError, match="onnxruntime.*backends: auto"):
        resolve_backends(["torch", "onnxruntime"], files)


@pytest.fixture()
def exported(files, tmp_path, monkeypatch):
    """The files of an exported model, with an ORT runner that records what it opened."""
    export = tmp_path / "export"
    export.mkdir()
    opened = []

    class OrtRunner:  # stands in for validators/ort_runner.py, written by the export work
        name = "onnxruntime"

        @classmethod
        def from_export_dir(cls, path, **kwargs):
            opened.append(path)
            return cls()

    monkeypatch.setitem(sys.modules, "validators.ort_runner", types.SimpleNamespace(OrtRunner=OrtRunner))
    return ModelFiles(checkpoint=files.checkpoint, export=export), opened


def test_an_export_is_run_by_the_ort_runner_when_the_exporters_provide_one(exported):
    files, opened = exported
    available, _ = resolve_backends("auto", files)
    assert available == ["torch", "onnxruntime"]
    runner = open_runner("onnxruntime", files)
    assert runner.name == "onnxruntime" and opened == [files.export]


def test_torch_is_required_as_the_reference(exported):
    with pytest.raises(SculptError, match="needs the torch backend as the reference"):
        resolve_backends(["onnxruntime"], exported[0])


def test_an_export_without_an_ort_runner_is_reported_not_crashed(files, tmp_path, monkeypatch):
    export = tmp_path / "export"
    export.mkdir()
    monkeypatch.setitem(sys.modules, "validators.ort_runner", None)  # import fails as if the module were absent
    _, unavailable = resolve_backends("auto", ModelFiles(checkpoint=files.checkpoint, export=export))
    assert "OrtRunner" in unavailable["onnxruntime"]


def test_importing_the_backends_loads_no_exporter_or_runtime():
    code = ("import sys, validators.backends; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('exporters', 'onnxruntime', 'tensorrt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT).stdout
    assert out.strip() == "[]"
