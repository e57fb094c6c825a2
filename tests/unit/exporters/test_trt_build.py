"""TensorRT build orchestration and the edge kit, against a RECORDED FAKE of the `tensorrt` module.

No real TensorRT exists here: tests/fake_tensorrt.py is a stand-in that records the calls the
build code makes, so these tests assert which profiles, flags and options a build would set for
each TensorRT version. They say nothing about what a real TensorRT would do with them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporters.edge_kit import write_kit
from exporters.onnx_io import GraphIO
from exporters.trt_build import build_engine, unavailable_reason
from exporters.trt_engine import BuildError
from exporters.trt_lint import lint
from exporters.trt_plan import BuildPlan
from pipeline.errors import SculptError
from pipeline.recipe import BuildSection
from tests import REPO_ROOT
from tests.fake_tensorrt import FAKE_DEVICE, make_fake_tensorrt
from tests.onnx_fixtures import exported_tiny, exported_tiny_fp16, sculpted_tiny  # noqa: F401 (fixtures)

REPO = REPO_ROOT
SECTION = BuildSection(batch=(1, 2, 4), prompt=(1, 64, 256), context=(1, 300, 1024), workspace_mib=512)


def plan_for(graph, **overrides):
    section = SECTION.model_copy(update=overrides)
    return BuildPlan.from_section(section, graph.io, graph.io.dtype)


def calls(fake, name):
    return [args for call, args in fake.calls if call == name]


def test_profiles_keep_mask_equal_to_past_plus_sequence_and_never_zero(exported_tiny):
    plan = plan_for(exported_tiny)
    prefill, decode = (p.shapes(exported_tiny.io) for p in plan.profiles)
    assert prefill["input_ids"] == [[1, 1], [2, 64], [4, 256]]
    assert prefill["attention_mask"] == [[1, 2], [2, 65], [4, 257]]  # one masked slot + the prompt
    assert prefill["past_key_values.1.key"] == [[1, 1, 1, 8], [2, 1, 1, 8], [4, 1, 1, 8]]  # that layer's 1 KV head
    assert decode["input_ids"] == [[1, 1], [2, 1], [4, 1]]
    assert decode["attention_mask"] == [[1, 2], [2, 301], [4, 1025]]
    assert decode["past_key_values.2.value"] == [[1, 2, 1, 8], [2, 2, 300, 8], [4, 2, 1024, 8]]
    assert lint(exported_tiny.path, "trt-10.3", plan.lint_profiles()).ok


def test_trt10_fp32_graph_builds_fp16_with_the_builder_flag(exported_tiny, tmp_path):
    fake = make_fake_tensorrt("10.3.0")
    plan = plan_for(exported_tiny, precision="fp16")
    record = build_engine(plan, exported_tiny.path, tmp_path, fake, FAKE_DEVICE, str(tmp_path / "shared.cache"),
                          log=lambda _: None)
    assert calls(fake, "create_network") == [(0,)]  # weakly typed, and no EXPLICIT_BATCH (gone in 11)
    assert calls(fake, "set_flag") == [("FP16",)]
    assert calls(fake, "set_memory_pool_limit") == [("WORKSPACE", 512 << 20)]
    expected = [(name, *map(tuple, shapes)) for p in plan.to_dict()["profiles"] for name, shapes in
                sorted(p["shapes"].items())]
    assert calls(fake, "set_shape") == expected and len(calls(fake, "add_optimization_profile")) == 2
    assert (tmp_path / "model.plan").read_bytes().startswith(b"FAKE-ENGINE")
    assert record["tensorrt"] == "10.3.0" and record["builder_flags"] == ["FP16"]
    assert record["gpu"] == FAKE_DEVICE["gpu"] and record["compute_capability"] == "8.7"
    assert {"engine_sha256", "onnx_sha256", "timing_cache_sha256", "cuda", "driver"} <= set(record)
    assert set(record["profiles"]) == {"prefill", "decode"}


def test_the_timing_cache_is_reused_by_the_next_build(exported_tiny, tmp_path):
    shared = tmp_path / "shared.cache"
    first, second = make_fake_tensorrt("10.3.0"), make_fake_tensorrt("10.3.0")
    plan = plan_for(exported_tiny)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    build_engine(plan, exported_tiny.path, tmp_path / "a", first, FAKE_DEVICE, str(shared), log=lambda _: None)
    record = build_engine(plan, exported_tiny.path, tmp_path / "b", second, FAKE_DEVICE, str(shared),
                          log=lambda _: None)
    assert calls(first, "create_timing_cache") == [(b"",)]
    assert calls(second, "create_timing_cache") == [(b"+",)]  # what the first build saved
    assert record["timing_cache_reused"] and shared.read_bytes() == b"++"


def test_fp16_graph_builds_strongly_typed_on_10_and_11(exported_tiny_fp16, tmp_path):
    for version in ("10.3.0", "11.0.0"):
        fake = make_fake_tensorrt(version)
        plan = plan_for(exported_tiny_fp16, precision="fp16", target="trt-11" if version[:2] == "11" else "trt-10.3")
        out = tmp_path / version
        out.mkdir()
        build_engine(plan, exported_tiny_fp16.path, out, fake, FAKE_DEVICE, str(out / "c"), log=lambda _: None)
        strongly_typed = 1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert calls(fake, "create_network") == [(strongly_typed,)] and calls(fake, "set_flag") == []


def test_trt11_has_no_fp16_flag_so_an_fp32_graph_cannot_become_fp16(exported_tiny, tmp_path):
    with pytest.raises(SculptError, match="TensorRT 11 has no fp16 builder flag"):
        plan_for(exported_tiny, precision="fp16", target="trt-11")
    plan = plan_for(exported_tiny, precision="fp16")  # planned for 10.3, run on 11
    with pytest.raises(BuildError, match="export an fp16 graph"):
        build_engine(plan, exported_tiny.path, tmp_path, make_fake_tensorrt("11.0.0"), FAKE_DEVICE,
                     str(tmp_path / "c"), log=lambda _: None)
    assert plan_for(exported_tiny, precision="fp32", target="trt-11").builder_flag is None


def test_compatibility_modes_and_optimization_level_reach_the_builder(exported_tiny, tmp_path):
    fake = make_fake_tensorrt("10.3.0")
    plan = plan_for(exported_tiny, precision="bf16", version_compatible=True, hardware_compatibility="ampere+",
                    optimization_level=2)
    build_engine(plan, exported_tiny.path, tmp_path, fake, FAKE_DEVICE, str(tmp_path / "c"), log=lambda _: None)
    assert calls(fake, "set_flag") == [("BF16",), ("VERSION_COMPATIBLE",)]
    assert calls(fake, "hardware_compatibility_level") == [("AMPERE_PLUS",)]
    assert calls(fake, "builder_optimization_level") == [(2,)]


def test_fp16_graph_with_another_precision_is_refused(exported_tiny_fp16):
    with pytest.raises(SculptError, match="graph is fp16"):
        plan_for(exported_tiny_fp16, precision="fp32")


def test_without_tensorrt_or_a_gpu_the_reason_says_what_to_do():
    assert "TensorRT is not installed" in unavailable_reason(None, {})
    assert "no NVIDIA GPU" in unavailable_reason(make_fake_tensorrt(), {"gpu": None})
    assert unavailable_reason(make_fake_tensorrt(), FAKE_DEVICE) is None


# ---- the edge kit -----------------------------------------------------------------
FAKE_TRTEXEC = """#!/usr/bin/env bash
# FAKE trtexec for tests: prints a TensorRT version banner and records its arguments; builds nothing.
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{version}] [b1] # trtexec $*"
if [ "$1" != "--help" ]; then printf '%s\\n' "$@" > "{log}"; fi
"""


def run_kit_script(kit: Path, tmp_path: Path, version: str):
    log = tmp_path / f"trtexec-{version}.args"
    fake = tmp_path / f"trtexec-{version}"
    fake.write_text(FAKE_TRTEXEC.format(version=version, log=log))
    fake.chmod(0o755)
    result = subprocess.run(["bash", str(kit / "build_engine.sh")], env={**os.environ, "TRTEXEC": str(fake)},
                            capture_output=True, text=True)
    return result, (log.read_text().splitlines() if log.is_file() else [])


def test_kit_shell_script_has_the_plans_shapes_and_the_flags_of_each_trt_version(exported_tiny, tmp_path):
    plan = plan_for(exported_tiny, precision="fp16")
    kit = tmp_path / "kit"
    write_kit(kit, plan, exported_tiny.directory, lint(exported_tiny.path, "trt-10.3"))
    assert {p.name for p in kit.iterdir()} >= {"model.onnx", "model.onnx.data", "io.json", "plan.json",
                                               "build_engine.sh", "build_engine.py", "README.md", "lint.json"}
    result, args = run_kit_script(kit, tmp_path, "100300")
    assert result.returncode == 0, result.stderr
    data = json.loads((kit / "plan.json").read_text())
    for index, profile in enumerate(data["profiles"]):
        at = args.index(f"--profile={index}")
        for point, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            spec = dict(item.split(":") for item in args[at + 1 + point].split("=", 1)[1].split(","))
            assert {k: [int(d) for d in v.split("x")] for k, v in spec.items()} == {
                name: shapes[point] for name, shapes in profile["shapes"].items()}
    assert "--fp16" in args and "--memPoolSize=workspace:512M" in args and "--onnx=model.onnx" in args
    assert GraphIO.load(kit) == exported_tiny.io

    result, args = run_kit_script(kit, tmp_path, "110000")
    assert result.returncode == 2 and "no --fp16" in result.stderr and not args


def test_kit_shell_script_builds_fp16_graphs_strongly_typed(exported_tiny_fp16, tmp_path):
    kit = tmp_path / "kit"
    write_kit(kit, plan_for(exported_tiny_fp16, precision="fp16"), exported_tiny_fp16.directory,
              lint(exported_tiny_fp16.path, "trt-10.3"))
    for version in ("100300", "110400"):
        result, args = run_kit_script(kit, tmp_path, version)
        assert result.returncode == 0 and "--stronglyTyped" in args and "--fp16" not in args


SHIM = """# Loads the FAKE tensorrt module for a test and hides llm-sculpt: the kit must run without it.
import sys
sys.path.insert(0, {repo!r})
from tests.fake_tensorrt import make_fake_tensorrt
fake = make_fake_tensorrt("10.3.0")
for name in ("pipeline", "exporters", "validators"):
    sys.modules[name] = None
sys.modules["tensorrt"] = fake
"""


def test_kit_python_script_runs_standalone_with_the_plan(exported_tiny, tmp_path):
    kit = tmp_path / "kit"
    write_kit(kit, plan_for(exported_tiny), exported_tiny.directory, lint(exported_tiny.path, "trt-10.3"))
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM.format(repo=str(REPO)))
    result = subprocess.run([sys.executable, str(kit / "build_engine.py")], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(shim)})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout[result.stdout.index("{"):])
    assert record["tensorrt"] == "10.3.0" and record["builder_flags"] == ["FP16"]
    assert (kit / "model.plan").is_file() and (kit / "timing.cache").is_file()
