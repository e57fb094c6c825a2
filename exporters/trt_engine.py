#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX graph and a build plan (plan.json).

Part of the llm-sculpt edge kit, where it is shipped as `build_engine.py`; llm-sculpt's own
`sculpt build` runs this same code. It needs only Python 3.8+ and TensorRT's Python bindings
(on JetPack 6: `sudo apt install python3-libnvinfer`), not llm-sculpt, torch or onnx.

    python3 build_engine.py                    # plan.json + model.onnx here -> model.plan
    python3 build_engine.py --engine out.plan --timing-cache ~/trt.cache

Engines are tied to the GPU and the TensorRT version that built them: build on the target.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time


class BuildError(RuntimeError):
    """The engine could not be built; the message says why and what to change."""


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt, strongly_typed: bool) -> int:
    """STRONGLY_TYPED when the graph's dtypes must decide. EXPLICIT_BATCH is never set: it is the only
    mode since TensorRT 10 and the flag is gone in 11."""
    names = trt.NetworkDefinitionCreationFlag
    if strongly_typed and hasattr(names, "STRONGLY_TYPED"):
        return 1 << int(names.STRONGLY_TYPED)
    return 0


def precision_flags(trt, plan: dict) -> list:
    """Builder flags for the plan's precision on this TensorRT (none when strongly typed)."""
    flag = plan.get("builder_flag")
    if not flag:
        return []
    if not hasattr(trt.BuilderFlag, flag):
        raise BuildError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (TensorRT 11 removed weak typing and reads the "
            f"precision from the ONNX dtypes): export an fp16 graph (sculpt export --export-precision fp16) and build it")
    return [getattr(trt.BuilderFlag, flag)]


def flag_name(flag) -> str:
    return getattr(flag, "name", None) or str(flag).split(".")[-1]


def read_bytes(path):
    if path and os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read()
    return b""


# Not pipeline.paths.sha256_file: this file ships alone in the edge kit, without llm-sculpt.
def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(plan: dict, onnx_path: str, engine_path: str, timing_cache_path=None, trt=None, log=print) -> dict:
    """Parse, configure from `plan`, build, write the engine (and the updated timing cache); return a record."""
    if trt is None:
        import tensorrt as trt  # noqa: PLC0415 (lazy: the rest of the kit works without TensorRT)
    began = time.time()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan["strongly_typed"]))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")
    inputs = sorted(network.get_input(i).name for i in range(network.num_inputs))
    for profile in plan["profiles"]:
        if sorted(profile["shapes"]) != inputs:
            raise BuildError(f"profile {profile['name']} gives shapes for {sorted(profile['shapes'])} but the network "
                             f"takes {inputs}: the plan was made for another graph; regenerate the kit")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan["workspace_mib"]) << 20)
    flags = precision_flags(trt, plan)
    if plan.get("version_compatible"):
        flags.append(trt.BuilderFlag.VERSION_COMPATIBLE)
    for flag in flags:
        config.set_flag(flag)
    if plan.get("hardware_compatibility", "none") == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if plan.get("builder_optimization_level") is not None:
        config.builder_optimization_level = int(plan["builder_optimization_level"])
    for profile in plan["profiles"]:
        shapes = builder.create_optimization_profile()
        for name, (low, opt, high) in sorted(profile["shapes"].items()):
            shapes.set_shape(name, tuple(low), tuple(opt), tuple(high))
        config.add_optimization_profile(shapes)
    cache = config.create_timing_cache(read_bytes(timing_cache_path))
    if not config.set_timing_cache(cache, False):
        log(f"timing cache {timing_cache_path} does not match this GPU/TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)

    log(f"building with TensorRT {trt.__version__}: {len(plan['profiles'])} profile(s), precision {plan['precision']}"
        f"{' (strongly typed)' if plan['strongly_typed'] else ''}; this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT {trt.__version__} failed to build the engine (see its log above): try a smaller "
                         "workspace, fewer/lower profile maxima, or precision fp32")
    with open(engine_path, "wb") as handle:
        handle.write(bytes(serialized))
    record = {"tensorrt": str(trt.__version__), "engine": os.path.basename(engine_path),
              "engine_sha256": sha256_file(engine_path), "engine_bytes": os.path.getsize(engine_path),
              "strongly_typed": bool(plan["strongly_typed"]), "builder_flags": [flag_name(f) for f in flags],
              "build_seconds": round(time.time() - began, 1)}
    if timing_cache_path:
        with open(timing_cache_path, "wb") as handle:
            handle.write(bytes(config.get_timing_cache().serialize()))
        record["timing_cache_sha256"] = sha256_file(timing_cache_path)
    return record


def device_info() -> dict:
    """GPU name, compute capability, driver and CUDA versions, from nvidia-smi, torch or Jetson's device tree."""
    info = {"gpu": None, "compute_capability": None, "driver": None, "cuda": None}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip().splitlines()
        if out:
            name, capability, driver = (part.strip() for part in out[0].split(","))
            info.update(gpu=name, compute_capability=capability, driver=driver)
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"CUDA Version:\s*([0-9.]+)", header)
        info["cuda"] = match.group(1) if match else None
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    if info["gpu"] is None:
        try:
            import torch  # noqa: PLC0415

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                info.update(gpu=torch.cuda.get_device_name(), compute_capability=f"{major}.{minor}",
                            cuda=torch.version.cuda)
        except ImportError:
            pass
    if info["gpu"] is None and os.path.isfile("/proc/device-tree/model"):  # Jetson: no nvidia-smi on older L4T
        with open("/proc/device-tree/model", "rb") as handle:
            info["gpu"] = handle.read().decode(errors="replace").strip("\x00 \n")
    return info


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description="Build a TensorRT engine from model.onnx and plan.json.")
    parser.add_argument("--plan", default=os.path.join(here, "plan.json"))
    parser.add_argument("--onnx", default=None, help="default: the plan's ONNX file beside it")
    parser.add_argument("--engine", default=os.path.join(here, "model.plan"))
    parser.add_argument("--timing-cache", default=os.path.join(here, "timing.cache"))
    args = parser.parse_args(argv)
    with open(args.plan) as handle:
        plan = json.load(handle)
    onnx_path = args.onnx or os.path.join(os.path.dirname(os.path.abspath(args.plan)), plan["onnx"])
    try:
        record = build(plan, onnx_path, args.engine, args.timing_cache)
    except ImportError:
        print("error: TensorRT's Python bindings are missing: on JetPack 6 `sudo apt install python3-libnvinfer`, "
              "on x86 use the NGC image nvcr.io/nvidia/tensorrt:24.08-py3 (or pip install tensorrt)", file=sys.stderr)
        return 1
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    record.update(device_info())
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
