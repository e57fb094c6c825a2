"""Build a TensorRT engine for the GPU at hand (TensorRT is imported lazily), and say why not when it can't.

The build itself is exporters/trt_engine.py, the same file the edge kit ships as
build_engine.py; this module adds what the pipeline records: the device, the versions,
the profiles and the hashes, and a timing cache reused across builds.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

from pipeline.paths import cache_root, sha256_file

from . import trt_engine
from .trt_plan import BuildPlan

ENGINE_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
INSTALL_HINT = ("install TensorRT (x86: the NGC image nvcr.io/nvidia/tensorrt:24.08-py3 or `pip install tensorrt`; "
                "Jetson: JetPack 6), or build from the edge kit in kit/ on the target")


def import_tensorrt():
    """The tensorrt module, or None when it is not installed."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        return None


def device_info() -> dict:
    return trt_engine.device_info()


def unavailable_reason(trt, device: dict) -> str | None:
    """Why no engine can be built here (the build stage is then recorded skipped), or None."""
    if trt is None:
        return f"TensorRT is not installed: {INSTALL_HINT}"
    if device.get("gpu") is None:
        return f"no NVIDIA GPU is visible (nvidia-smi and torch.cuda find none): {INSTALL_HINT}"
    return None


def shared_timing_cache(trt, device: dict, configured: str | None) -> Path:
    """The timing cache reused across builds: the recipe's file, else one per GPU and TensorRT version."""
    if configured:
        return Path(configured).expanduser()
    gpu = re.sub(r"[^A-Za-z0-9.]+", "-", str(device.get("gpu"))).strip("-").lower()
    return cache_root() / "tensorrt" / f"timing-{gpu}-trt{trt.__version__}.cache"


def build_engine(plan: BuildPlan, onnx_path: Path, out_dir: Path, trt, device: dict,
                 timing_cache: str | None = None, log=print) -> dict:
    """Write `out_dir/model.plan`, `out_dir/timing.cache` and `out_dir/io.json` (the engine's inputs and outputs,
    what the TensorRT runner feeds it by, as the kit's io.json beside an engine built there); return what the
    manifest records."""
    shared = shared_timing_cache(trt, device, timing_cache)
    local = out_dir / TIMING_CACHE_FILE
    reused = shared.is_file()
    if reused:
        shutil.copyfile(shared, local)
    record = trt_engine.build(plan.to_dict(), str(onnx_path), str(out_dir / ENGINE_FILE), str(local), trt=trt,
                              log=log)
    plan.io.save(out_dir)
    shared.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local, shared)
    return {
        **record,
        "tensorrt_major": trt_engine.trt_major(trt),
        "gpu": device.get("gpu"), "compute_capability": device.get("compute_capability"),
        "cuda": device.get("cuda"), "driver": device.get("driver"),
        "precision": plan.precision, "graph_dtype": plan.graph_dtype,
        "version_compatible": plan.version_compatible, "hardware_compatibility": plan.hardware_compatibility,
        "profiles": {p["name"]: p["shapes"] for p in plan.to_dict()["profiles"]},
        "onnx_sha256": sha256_file(onnx_path), "timing_cache_reused": reused, "timing_cache_shared": str(shared),
    }
