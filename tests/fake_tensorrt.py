"""A FAKE `tensorrt` module, for testing llm-sculpt's build orchestration and its runner where no TensorRT exists.

It is NOT TensorRT. It mimics the handful of TensorRT Python API calls that llm-sculpt makes (names
as in TensorRT 10.x and 11.x) and RECORDS them in `module.calls`:

- building (exporters/trt_engine.py): it optimises nothing. The "engine" it serialises is
  `FAKE-ENGINE {json}`: the ONNX file it parsed and the optimization profiles' shapes, so tests can
  assert which profiles, flags and options a build would set for each TensorRT version. Version
  differences it models (from NVIDIA's 10.x -> 11.x migration notes): 11.x has no BuilderFlag.FP16/BF16
  and no NetworkDefinitionCreationFlag.EXPLICIT_BATCH.
- running (validators/trt_runner.py): `Runtime.deserialize_cuda_engine` turns such an engine back
  into one that REALLY COMPUTES, by running the same ONNX through ONNX Runtime (CPU). Its execution
  context speaks TensorRT 10's name-based API and refuses what a real engine refuses: a profile index
  it does not have, an input shape outside the selected profile's min..max (input shapes are forgotten
  when the profile changes, as TensorRT invalidates them), an unset shape or tensor address, inputs
  whose symbolic dimensions disagree. It reads the inputs from, and writes the outputs to, the raw
  memory at the addresses it was given (host memory here: the runner's tensors are on the CPU), so a
  wrong buffer, dtype or shape gives wrong numbers, not a pass. Refusals are recorded in
  `module.errors`, as TensorRT logs them.
"""

from __future__ import annotations

import ast
import ctypes
import enum
import json
import operator
import types

import numpy as np
import onnx


def make_fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh fake module; `module.calls` lists (call, args) in order."""
    major = int(version.split(".")[0])
    calls: list[tuple[str, tuple]] = []
    errors: list[str] = []
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    fake.calls = calls
    fake.errors = errors
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
            self.network.onnx_path = str(path)
            return True

        def get_error(self, index):
            return "fake parser error"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            calls.append(("set_shape", (name, tuple(low), tuple(opt), tuple(high))))
            self.shapes[name] = [list(low), list(opt), list(high)]

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"  # a cache that grows with every build that used it

    class Config:
        def __init__(self):
            self.cache = None
            self.profiles = []

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", (pool.name, size)))

        def set_flag(self, flag):
            calls.append(("set_flag", (flag.name,)))

        def add_optimization_profile(self, profile):
            self.profiles.append(profile.shapes)
            calls.append(("add_optimization_profile", (len(self.profiles) - 1,)))
            return len(self.profiles) - 1

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
            return ENGINE_MAGIC + json.dumps({"onnx": network.onnx_path, "profiles": config.profiles}).encode()

    fake.Logger, fake.OnnxParser, fake.Builder = Logger, OnnxParser, Builder
    _add_runtime(fake)
    return fake


ENGINE_MAGIC = b"FAKE-ENGINE "
DATA_TYPES = {"tensor(float)": ("FLOAT", np.float32), "tensor(float16)": ("HALF", np.float16),
              "tensor(int64)": ("INT64", np.int64), "tensor(int32)": ("INT32", np.int32),
              "tensor(bool)": ("BOOL", np.bool_)}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def dimension(expr, symbols: dict[str, int]) -> int:
    """A graph dimension: an int, a symbol bound by the inputs' shapes, or arithmetic on them ('past + seq');
    -1 when it cannot be known yet (as TensorRT reports it)."""
    if isinstance(expr, int):
        return expr

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in symbols:
            return symbols[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise KeyError(ast.dump(node))

    try:
        return value(ast.parse(str(expr), mode="eval").body)
    except (KeyError, SyntaxError):
        return -1


def host_memory(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array at a raw address (what TensorRT does with a device pointer, done on host memory)."""
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def _add_runtime(fake: types.ModuleType) -> None:
    """Runtime, engine and execution context: TensorRT 10's name-based API over ONNX Runtime."""
    calls, errors = fake.calls, fake.errors
    fake.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8"])
    fake.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])

    def refuse(message: str) -> bool:
        errors.append(message)
        return False

    class Engine:
        def __init__(self, onnx_path: str, profiles: list[dict]):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            self.profiles = profiles
            self.tensors = {}  # name -> (mode, graph dims, numpy dtype, TensorRT type name)
            for mode, values in ((fake.TensorIOMode.INPUT, self.session.get_inputs()),
                                 (fake.TensorIOMode.OUTPUT, self.session.get_outputs())):
                for value in values:
                    kind, dtype = DATA_TYPES[value.type]
                    self.tensors[value.name] = (mode, list(value.shape), dtype, kind)
            self.names = list(self.tensors)
            self.inputs = [n for n in self.names if self.tensors[n][0] == fake.TensorIOMode.INPUT]
            for index, profile in enumerate(profiles):
                if sorted(profile) != sorted(self.inputs):
                    raise ValueError(f"fake engine: profile {index} covers {sorted(profile)}, not every input")

        @property
        def num_io_tensors(self):
            return len(self.names)

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return self.tensors[name][0] if name in self.tensors else fake.TensorIOMode.NONE

        def get_tensor_dtype(self, name):
            return getattr(fake.DataType, self.tensors[name][3])

        def get_tensor_shape(self, name):
            return tuple(d if isinstance(d, int) else -1 for d in self.tensors[name][1])

        def get_tensor_profile_shape(self, name, profile_index):
            return tuple(tuple(shape) for shape in self.profiles[profile_index][name])

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.active_optimization_profile = 0  # TensorRT's default
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_optimization_profile_async(self, index, stream_handle):
            calls.append(("set_optimization_profile_async", (index,)))
            if not isinstance(stream_handle, int):
                return refuse(f"set_optimization_profile_async: stream handle {stream_handle!r} is not an int")
            if not 0 <= index < self.engine.num_optimization_profiles:
                return refuse(f"set_optimization_profile_async: no profile {index}")
            self.active_optimization_profile = index
            self.shapes.clear()  # TensorRT invalidates the input shapes set for another profile
            return True

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            mode, dims, _, _ = self.engine.tensors.get(name, (None, None, None, None))
            if mode != fake.TensorIOMode.INPUT:
                return refuse(f"set_input_shape: {name} is not an input")
            low, _, high = self.engine.profiles[self.active_optimization_profile][name]
            fixed = [d if isinstance(d, int) else None for d in dims]
            if len(shape) != len(dims) or any(f is not None and f != d for f, d in zip(fixed, shape)):
                return refuse(f"set_input_shape: {name} {shape} does not fit the graph's {dims}")
            if any(not lo <= d <= hi for lo, d, hi in zip(low, shape, high)):
                return refuse(f"set_input_shape: {name} {shape} is outside profile "
                              f"{self.active_optimization_profile}'s {tuple(low)}..{tuple(high)}")
            self.shapes[name] = shape
            return True

        def _symbols(self) -> dict[str, int] | None:
            """Symbolic dimension -> size from the input shapes set; None when two inputs disagree."""
            symbols: dict[str, int] = {}
            for name, shape in self.shapes.items():
                for dim, size in zip(self.engine.tensors[name][1], shape):
                    if isinstance(dim, str) and symbols.setdefault(dim, size) != size:
                        refuse(f"input shapes disagree on {dim}: {symbols[dim]} and {size} ({name})")
                        return None
            return symbols

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            dims = self.engine.tensors[name][1]
            symbols = self._symbols() if set(self.engine.inputs) <= set(self.shapes) else {}
            return tuple(dimension(d, symbols or {}) for d in dims)

        def set_tensor_address(self, name, address):
            if name not in self.engine.tensors:
                return refuse(f"set_tensor_address: no tensor {name}")
            if not isinstance(address, int) or address == 0:
                return refuse(f"set_tensor_address: {name} at {address!r}")
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            engine = self.engine
            calls.append(("execute_async_v3", (self.active_optimization_profile,
                                               {name: self.shapes.get(name) for name in engine.inputs})))
            if not isinstance(stream_handle, int):
                return refuse(f"execute_async_v3: stream handle {stream_handle!r} is not an int")
            unset = [n for n in engine.inputs if n not in self.shapes]
            missing = [n for n in engine.names if n not in self.addresses]
            if unset or missing:
                return refuse(f"execute_async_v3: shapes not set for {unset}, addresses not set for {missing}")
            if self._symbols() is None:
                return False
            feeds = {name: host_memory(self.addresses[name], self.shapes[name], engine.tensors[name][2]).copy()
                     for name in engine.inputs}
            outputs = [n for n in engine.names if n not in engine.inputs]
            try:
                results = engine.session.run(outputs, feeds)
            except Exception as error:  # noqa: BLE001 (TensorRT reports a failed run as False, with a log line)
                return refuse(f"execute_async_v3: the graph failed: {error}")
            for name, result in zip(outputs, results):
                expected = self.get_tensor_shape(name)
                if tuple(result.shape) != tuple(expected):
                    return refuse(f"execute_async_v3: {name} came out {result.shape}, inferred {expected}")
                host_memory(self.addresses[name], expected, engine.tensors[name][2])[...] = result
            return True

    class Runtime:
        def __init__(self, logger):
            calls.append(("Runtime", ()))

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(ENGINE_MAGIC):
                errors.append("deserialize_cuda_engine: not an engine of this (fake) TensorRT")
                return None
            plan = json.loads(data[len(ENGINE_MAGIC):])
            return Engine(plan["onnx"], plan["profiles"])

    fake.Runtime = Runtime


FAKE_DEVICE = {"gpu": "FAKE GPU (test double)", "compute_capability": "8.7", "driver": "540.4.0", "cuda": "12.6"}
