"""The build stage: the kit always, the engine only where TensorRT and a GPU are (a RECORDED FAKE here)."""

import json
import shutil

import pytest

import pipeline.stages.build as build_stage
from pipeline.artifacts import Artifact, verify
from pipeline.errors import SculptError
from pipeline.recipe import build_recipe
from pipeline.workflow import run_stage
from tests.fake_tensorrt import FAKE_DEVICE, make_fake_tensorrt
from tests.onnx_fixtures import exported_tiny, sculpted_tiny  # noqa: F401 (fixtures)


@pytest.fixture()
def exported_artifact(exported_tiny, tmp_path, monkeypatch):
    """An artifact whose export stage holds the tiny heterogeneous export; the shared timing cache under tmp."""
    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "cache"))
    recipe = build_recipe(overrides={"build.prompt": [1, 16, 32], "build.context": [1, 32, 64]})
    artifact = Artifact.create(tmp_path / "artifacts", source={"id": "tiny", "kind": "dir"}, recipe=recipe.to_dict())
    with artifact.stage("export") as st:
        for name in ("model.onnx", "model.onnx.data", "io.json"):
            shutil.copyfile(exported_tiny.directory / name, st.dir / name)
    return artifact


def record(artifact, name):
    return artifact.manifest.record(name)


def test_without_tensorrt_the_build_is_skipped_with_the_reason_and_the_kit_written(exported_artifact, monkeypatch):
    monkeypatch.setattr(build_stage, "import_tensorrt", lambda: None)
    run_stage(exported_artifact.path, "build", progress=False)
    build, kit = record(exported_artifact, "build"), record(exported_artifact, "kit")
    assert build.status == "skipped" and "TensorRT is not installed" in build.reason
    assert kit.status == "done" and "kit/build_engine.sh" in kit.outputs and "kit/model.onnx" in kit.outputs
    plan = json.loads((exported_artifact.path / "kit" / "plan.json").read_text())
    assert [p["seq"] for p in plan["profiles"]] == [[1, 16, 32], [1, 1, 1]]
    assert not verify(exported_artifact.path)
    assert [s.name for s in exported_artifact.manifest.stages] == ["export", "kit", "build"]


def test_with_tensorrt_and_a_gpu_the_engine_is_built_and_recorded(exported_artifact, monkeypatch):
    fake = make_fake_tensorrt("10.3.0")  # a FAKE tensorrt that records calls; see tests/fake_tensorrt.py
    monkeypatch.setattr(build_stage, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(build_stage, "device_info", lambda: dict(FAKE_DEVICE))
    run_stage(exported_artifact.path, "build", progress=False)
    build = record(exported_artifact, "build")
    assert build.status == "done" and {"build/model.plan", "build/timing.cache"} <= set(build.outputs)
    metrics = build.metrics
    assert metrics["tensorrt"] == "10.3.0" and metrics["gpu"] == FAKE_DEVICE["gpu"]
    assert metrics["compute_capability"] == "8.7" and metrics["precision"] == "fp16"
    assert metrics["engine_sha256"] == build.outputs["build/model.plan"].sha256
    assert metrics["onnx_sha256"] == record(exported_artifact, "export").outputs["export/model.onnx"].sha256
    assert metrics["profiles"]["decode"]["attention_mask"] == [[1, 2], [1, 33], [4, 65]]  # build.batch max 4
    assert exported_artifact.is_current("build", build_stage.options(_ctx(exported_artifact)),
                                        build_stage.inputs(_ctx(exported_artifact)))


def test_a_graph_that_fails_the_lint_fails_the_build(exported_artifact, monkeypatch):
    monkeypatch.setattr(build_stage, "import_tensorrt", lambda: None)
    monkeypatch.setattr(build_stage, "lint", _failing_lint)
    with pytest.raises(SculptError, match="fails the TensorRT lint"):
        run_stage(exported_artifact.path, "build", progress=False)
    assert record(exported_artifact, "build").status == "failed"
    assert record(exported_artifact, "kit").status == "done"  # the kit still says what is wrong


def _failing_lint(path, target, profiles=None):
    from exporters.trt_lint import Finding, LintReport

    return LintReport(target, "10.3", [Finding("error", "unsupported-op", "Unique is not in the table", "n1")])


def _ctx(artifact):
    from pipeline.stages import StageContext

    return StageContext(artifact, build_recipe(artifact.manifest.recipe), progress=False)
