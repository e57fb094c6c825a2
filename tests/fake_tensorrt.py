"""A FAKE `tensorrt` module, for testing llm-sculpt's build orchestration where no TensorRT exists.

It is NOT TensorRT and builds nothing: it mimics the handful of TensorRT Python API calls that
exporters/trt_engine.py makes (names as in TensorRT 10.x and 11.x) and RECORDS every call, so
tests can assert which profiles, flags and options a build would set for each TensorRT version.
Version differences it models (from NVIDIA's 10.x -> 11.x migration notes): 11.x has no
BuilderFlag.FP16/BF16 and no NetworkDefinitionCreationFlag.EXPLICIT_BATCH.
"""

from __future__ import annotations

import enum
import json
import types

import onnx


def make_fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh fake module; `module.calls` lists (call, args) in order."""
    major = int(version.split(".")[0])
    calls: list[tuple[str, tuple]] = []
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    fake.calls = calls
    fake.IS_FAKE = True

    network_flags = {"STRONGLY_TYPED": 1} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    fake.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)
    builder_flags = ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "TF32"] + (
        [] if major >= 11 else ["FP16", "BF16", "INT8", "OBEY_PRECISION_CONSTRAINTS"])
    fake.BuilderFlag = enum.Enum("BuilderFlag", builder_flags)
    fake.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    fake.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS"])

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity=None):
            calls.append(("Logger", (severity,)))

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list[Tensor] = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            calls.append(("parse_from_file", (str(path),)))
            graph = onnx.load(str(path), load_external_data=False).graph
            self.network.inputs = [Tensor(value.name) for value in graph.input]
            return True

        def get_error(self, index):
            return "fake parser error"

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls.append(("set_shape", (name, tuple(low), tuple(opt), tuple(high))))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"  # a cache that grows with every build that used it

    class Config:
        def __init__(self):
            self.cache = None
            self.profiles = 0

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", (pool.name, size)))

        def set_flag(self, flag):
            calls.append(("set_flag", (flag.name,)))

        def add_optimization_profile(self, profile):
            self.profiles += 1
            calls.append(("add_optimization_profile", (self.profiles - 1,)))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", (bytes(blob),)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def __setattr__(self, name, value):
            if name in ("hardware_compatibility_level", "builder_optimization_level"):
                calls.append((name, (getattr(value, "name", value),)))
            object.__setattr__(self, name, value)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", (flags,)))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", ()))
            return b"FAKE-ENGINE " + json.dumps({"profiles": config.profiles}).encode()

    fake.Logger, fake.OnnxParser, fake.Builder = Logger, OnnxParser, Builder
    return fake


FAKE_DEVICE = {"gpu": "FAKE GPU (test double)", "compute_capability": "8.7", "driver": "540.4.0", "cuda": "12.6"}
