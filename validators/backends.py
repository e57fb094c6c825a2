"""The backends the validate stage measures, and how to open each one for a model's files.

    files = ModelFiles(checkpoint=art / "slice/model", export=art / "export", build=art / "build")
    available, unavailable = resolve_backends("auto", files)   # ["torch"], {"tensorrt": "not available: ..."}
    runner = open_runner("torch", files)

Each backend is checked before it is opened: the check imports its library (lazily: a machine
without TensorRT never imports it) and looks for the stage output it runs from. A backend that
cannot run says why in one line; with `backends: auto` the others go on, with an explicit list
it is an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SculptError
from pipeline.measures.runners import MeasuredRunner
from pipeline.targets import BACKEND_NAMES

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class BackendUnavailable(Exception):
    """A backend cannot run here; the message is the reason, for a person."""


@dataclass(frozen=True)
class ModelFiles:
    """Where one model's files are, per backend, and how torch should load it."""

    checkpoint: Path  # a Hugging Face checkpoint directory (torch)
    export: Path | None = None  # the export stage's directory (ONNX graphs)
    build: Path | None = None  # the build stage's directory (a TensorRT engine, or only an edge kit)
    dtype: str = "float32"
    device: str = "cpu"

    def as_dict(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelFiles:
        paths = {key: Path(data[key]) if data.get(key) else None for key in ("checkpoint", "export", "build")}
        return cls(**paths, dtype=data.get("dtype", "float32"), device=data.get("device", "cpu"))


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    check: Callable[[ModelFiles], None]  # imports the library, looks for the files; raises BackendUnavailable
    open: Callable[[ModelFiles], MeasuredRunner]


def _check_torch(files: ModelFiles) -> None:
    if not (files.checkpoint / "config.json").is_file():
        raise BackendUnavailable(f"no checkpoint in {files.checkpoint}: run the slice stage")
    if files.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(f"device {files.device} asked for, but this torch sees no CUDA GPU")


def _open_torch(files: ModelFiles) -> MeasuredRunner:
    from transformers import AutoModelForCausalLM

    import pipeline  # noqa: F401  (registers the sculpted model classes)
    from pipeline.models.loading import DTYPES

    from pipeline.measures.runners import TorchRunner

    model = AutoModelForCausalLM.from_pretrained(files.checkpoint, dtype=DTYPES[files.dtype])
    return TorchRunner(model, files.device)


def _require_dir(path: Path | None, stage: str, what: str) -> Path:
    if path is None or not path.is_dir():
        raise BackendUnavailable(f"no {stage} stage output: run `sculpt {stage}` to {what}")
    return path


def _require_module(module: str, fix: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise BackendUnavailable(f"{module} is not installed: {fix}") from None


def _runner_class(module: str, cls: str):
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        raise BackendUnavailable(f"this llm-sculpt has no {cls} ({module.replace('.', '/')}.py)") from None


def _check_onnxruntime(files: ModelFiles) -> None:
    # the library first: in a base install `sculpt export` cannot run either, so the fix is the install command
    _require_module("onnxruntime", "pip install 'llm-sculpt[onnx]'")
    _require_dir(files.export, "export", "write the ONNX graphs")
    _runner_class("validators.ort_runner", "OrtRunner")


def _open_onnxruntime(files: ModelFiles) -> MeasuredRunner:
    runner = _runner_class("validators.ort_runner", "OrtRunner")
    if files.device == "cpu":
        return runner.from_export_dir(files.export)
    return runner.from_export_dir(files.export, device=files.device)  # CUDA provider, KV cache kept on the GPU


def engine_files(build: Path) -> list[Path]:
    return sorted(p for p in build.rglob("*") if p.is_file() and p.suffix in ENGINE_SUFFIXES)


def _check_tensorrt(files: ModelFiles) -> None:
    build = _require_dir(files.build, "build", "build a TensorRT engine")
    _require_module("tensorrt", "it needs an NVIDIA GPU; use the docker/ images, or build the engine from the "
                                "edge kit on the device")
    if not engine_files(build):
        raise BackendUnavailable("the build stage wrote an edge kit but no engine (no GPU or TensorRT when it ran)")
    from exporters.onnx_io import IO_FILE  # here, not at the top: importing this module loads no exporter

    if not (build / IO_FILE).is_file():
        raise BackendUnavailable(f"no {IO_FILE} beside the engine in {build} (built by an older llm-sculpt): "
                                 "re-run `sculpt build`")
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT runs on an NVIDIA GPU, and this torch sees no CUDA GPU")
    _runner_class("validators.trt_runner", "TrtRunner")


def _trt_device(files: ModelFiles) -> str:
    """The GPU the engine runs on: the recipe's CUDA device, else the first GPU (an engine never runs on the CPU)."""
    return files.device if files.device.startswith("cuda") else "cuda"


def _open_tensorrt(files: ModelFiles) -> MeasuredRunner:
    return _runner_class("validators.trt_runner", "TrtRunner").from_build_dir(files.build, device=_trt_device(files))


BACKENDS = {
    "torch": Backend("torch", "PyTorch, the reference", _check_torch, _open_torch),
    "onnxruntime": Backend("onnxruntime", "ONNX Runtime on the export stage's graphs", _check_onnxruntime,
                           _open_onnxruntime),
    "tensorrt": Backend("tensorrt", "TensorRT on the build stage's engine", _check_tensorrt, _open_tensorrt),
}


def unavailable_reason(name: str, files: ModelFiles) -> str | None:
    """None when backend `name` can run on `files`, else why not (one line)."""
    try:
        BACKENDS[name].check(files)
    except BackendUnavailable as reason:
        return f"not available: {reason}"
    return None


def resolve_backends(requested: str | list[str], files: ModelFiles) -> tuple[list[str], dict[str, str]]:
    """(backends to measure, {backend: why not}) for `requested` = "auto" (every available one) or a list
    (each required: a SculptError names the first that cannot run)."""
    names = list(BACKEND_NAMES) if requested == "auto" else list(requested)
    available, unavailable = [], {}
    for name in names:
        if name not in BACKENDS:
            raise SculptError(f"unknown backend {name!r}: choose from {', '.join(BACKEND_NAMES)}")
        reason = unavailable_reason(name, files)
        if reason is None:
            available.append(name)
        elif requested == "auto":
            unavailable[name] = reason
        else:
            raise SculptError(f"validate.backends asks for {name}, which is {reason}; "
                              f"drop it from the list or use backends: auto")
    if "torch" not in available:
        why = unavailable.get("torch") or "not in validate.backends"
        raise SculptError(f"validate needs the torch backend as the reference, which is {why}: "
                          f"add torch to validate.backends, or fix what the reason names")
    return available, unavailable


def open_runner(name: str, files: ModelFiles) -> MeasuredRunner:
    BACKENDS[name].check(files)
    return BACKENDS[name].open(files)
