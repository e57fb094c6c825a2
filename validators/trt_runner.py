"""TensorRT backend: the build stage's engine behind the same runner interface as torch and ONNX Runtime.

    runner = TrtRunner.from_build_dir(artifact / "build")      # model.plan + io.json (or a kit/ built on the device)
    perplexity(runner, ids, 512); runner.generate(prompt, 16); runner.decode_throughput(batch=1)

The engine is the exported graph (exporters/onnx_io.py), so it is fed exactly as ONNX Runtime
feeds it, by the same loop (`graph_runner.GraphRunner`): a prompt after one masked dummy cache
slot, then one token per step with the previous step's presents as the past. Only one call of the
graph differs, and it is TensorRT 10's name-based API:

- the engine holds two optimization profiles, at the indices of `onnx_io.PROFILES` (the build adds
  them in that order): a prompt runs in the `prefill` profile, a step in the `decode` profile;
  switching is `set_optimization_profile_async` on the runner's CUDA stream;
- every input's shape is set for the call (`set_input_shape`; a shape outside the profile's range is
  an error that names the build setting to widen), every output is allocated at the shape TensorRT
  infers from them, as a torch CUDA tensor, and every tensor's address is set;
- `execute_async_v3` on the stream, then the stream is synchronised. The KV cache never leaves the
  GPU: the presents, torch tensors, are bound as the next step's past; only the logits are copied
  to the host.

TensorRT is imported lazily (`from_build_dir`): without it this module still imports.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import numpy as np
import torch

from exporters.onnx_io import DECODE, INPUT_IDS, IO_FILE, LOGITS, PREFILL, PROFILES, GraphIO
from pipeline.errors import SculptError

from .graph_runner import GraphRunner

TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
                "INT32": torch.int32, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
# which recipe setting widens each profile (exporters/trt_plan.py: BuildPlan.from_section)
PROFILE_SETTINGS = {"prefill": "build.batch / build.prompt", "decode": "build.batch / build.context"}


def import_tensorrt():
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise SculptError("the TensorRT backend needs TensorRT's Python bindings and an NVIDIA GPU: use the docker/ "
                          "images, or `pip install tensorrt` on a machine with CUDA") from None


def engine_file(directory: Path) -> Path:
    """The one engine in `directory` (model.plan from `sculpt build` or the kit; .engine/.trt from trtexec)."""
    from .backends import engine_files

    found = [path for path in engine_files(directory) if path.parent == directory]
    if len(found) != 1:
        what = "no engine" if not found else f"{len(found)} engines ({', '.join(p.name for p in found)})"
        raise SculptError(f"{directory} holds {what}: pass a directory with exactly one TensorRT engine "
                          "(`sculpt build` writes build/model.plan)")
    return found[0]


class TrtRunner(GraphRunner):
    """A TensorRT engine of an exported decoder graph behind the `MeasuredRunner` and `DecodingRunner` protocols."""

    name = "tensorrt"

    def __init__(self, engine, io: GraphIO, trt, device: str | torch.device = "cuda") -> None:
        self.engine, self.io, self.trt = engine, io, trt
        self.device = torch.device(device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self._outputs = [name for name in names if name not in self._inputs]
        unknown, missing = set(self._inputs) - set(io.input_names), set(io.output_names) - set(self._outputs)
        if unknown or missing:
            raise SculptError(f"the engine does not match its {IO_FILE} (inputs it takes that io.json lacks: "
                              f"{sorted(unknown)}; outputs io.json promises that it lacks: {sorted(missing)}): "
                              "rebuild it with `sculpt build`")
        if engine.num_optimization_profiles != len(PROFILES):
            raise SculptError(f"the engine has {engine.num_optimization_profiles} optimization profile(s), not the "
                              f"{len(PROFILES)} ({', '.join(PROFILES)}) llm-sculpt builds: rebuild it with `sculpt "
                              "build` or the kit's build_engine.sh")
        self._dtypes = {}
        for name in names:
            kind = getattr(engine.get_tensor_dtype(name), "name", str(engine.get_tensor_dtype(name)))
            if kind not in TORCH_DTYPES:
                raise SculptError(f"engine tensor {name} has TensorRT type {kind}, which this runner cannot hold")
            self._dtypes[name] = TORCH_DTYPES[kind]
        self.context = engine.create_execution_context()
        if self.context is None:
            raise SculptError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._stream_handle = self.stream.cuda_stream if self.stream is not None else 0
        self._profile: int | None = None  # the profile selected on the context; chosen on the first call

    @classmethod
    def from_build_dir(cls, path: str | Path, device: str = "cuda") -> TrtRunner:
        """Open the engine in `path` with the io.json beside it (`sculpt build` writes both to build/; an engine
        built in the edge kit has the kit's io.json)."""
        trt = import_tensorrt()
        path = Path(path)
        engine_path = engine_file(path)
        io = GraphIO.load(path)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise SculptError(f"TensorRT {trt.__version__} could not load {engine_path} (see its log above): an engine "
                              "runs only on the GPU model and TensorRT version that built it; rebuild it here with "
                              "`sculpt build`")
        runner = cls(engine, io, trt, device)
        runner._runtime = runtime  # the engine's runtime lives as long as the runner
        return runner

    # ---- one call of the engine ---------------------------------------------------------
    def _execute(self, feeds: dict, profile: str, logits_on_host: bool) -> dict:
        index = PROFILES.index(profile)
        on_stream = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with on_stream:
            if self._profile != index:
                if not self.context.set_optimization_profile_async(index, self._stream_handle):
                    raise SculptError(f"TensorRT would not select the engine's {profile} profile (index {index})")
                self._profile = index
            buffers = {}
            for name in self._inputs:
                buffers[name] = tensor = self._on_device(feeds[name], name)
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise SculptError(self._outside_profile(name, tuple(tensor.shape), profile))
            for name in self._outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(dim < 0 for dim in shape):
                    raise SculptError(f"TensorRT could not infer the shape of {name} ({shape}) from the inputs")
                buffers[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            for name, tensor in buffers.items():
                if not self.context.set_tensor_address(name, tensor.data_ptr()):
                    raise SculptError(f"TensorRT refused the buffer of {name}")
            if not self.context.execute_async_v3(self._stream_handle):
                raise SculptError(f"TensorRT failed to run the engine's {profile} profile (see its log above)")
            if self.stream is not None:
                self.stream.synchronize()  # the buffers above must outlive the call; timings need it done
        outputs = {name: buffers[name] for name in self._outputs}
        if logits_on_host:
            outputs[LOGITS] = outputs[LOGITS].cpu().numpy()
        return outputs

    def _on_device(self, value, name: str) -> torch.Tensor:
        """A contiguous tensor of the engine's dtype for input `name` on the runner's device (a present of the last
        call is already one: no copy)."""
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return tensor.to(self.device, self._dtypes[name]).contiguous()

    def profile_range(self, profile: str, name: str = INPUT_IDS) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min, max) shape of input `name` in the engine's `profile`."""
        low, _, high = self.engine.get_tensor_profile_shape(name, PROFILES.index(profile))
        return tuple(low), tuple(high)

    def workload_problem(self, prompts: dict[str, int], batches: dict[str, int], cached: dict[str, int]) -> str | None:
        """Why the engine's profiles cannot run a workload, in one line naming the settings (None when they can).

        `prompts`: tokens per prompt, `batches`: sequences per call (each prefilled, then decoded), `cached`:
        cache slots a decode step reads (dummy slot included), each keyed by the setting that asks for it. A
        batch larger than the prefill profile's is fine for scoring (`logits` slices it), not for decoding."""
        prefill_batch, prefill_seq = self.profile_range(PREFILL)[1][:2]
        decode_batch = self.profile_range(DECODE)[1][0]
        past = self.profile_range(DECODE, self.io.past_inputs[0])[1][2] if self.io.past_inputs else None
        problems = [f"{key} {length} > {prefill_seq} prompt tokens (build.prompt)"
                    for key, length in prompts.items() if length > prefill_seq]
        problems += [f"{key} {batch} > {min(prefill_batch, decode_batch)} sequences (build.batch)"
                     for key, batch in batches.items() if batch > min(prefill_batch, decode_batch)]
        problems += [f"{key}: {slots} > {past} cached tokens (build.context)"
                     for key, slots in cached.items() if past is not None and slots > past]
        if not problems:
            return None
        return (f"the TensorRT engine's profiles are too small for this validate workload ({'; '.join(problems)}): "
                "rebuild the engine with a larger build.prompt / build.batch / build.context max, or lower those "
                "validate settings")

    def _outside_profile(self, name: str, shape: tuple[int, ...], profile: str) -> str:
        low, high = self.profile_range(profile, name)
        return (f"TensorRT's {profile} profile takes {name} from {low} to {high}, not {shape}: rebuild the engine "
                f"with a wider {PROFILE_SETTINGS.get(profile, 'profile')}, or ask validate for shorter/fewer "
                "sequences (validate.seq_len, prefill_lengths, decode_batch_sizes)")

    # ---- scores ---------------------------------------------------------------------
    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """As `GraphRunner.logits`, a batch larger than the prefill profile's run in slices of its largest batch."""
        most = self.profile_range(PREFILL)[1][0]
        return torch.cat([super(TrtRunner, self).logits(part) for part in input_ids.split(most)])
