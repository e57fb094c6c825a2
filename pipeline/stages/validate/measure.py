"""What the validate stage measures on one model with one backend: perplexity, timings, memory, size.

All settings come from the recipe's `validate` section (see `Workload`); the results are plain
dicts, stored as they are in `validate/report.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from validators.backends import ModelFiles, engine_files
from validators.memory import measure_memory

from ...measures.perplexity import perplexity
from ...measures.runners import MeasuredRunner
from ...recipe import ValidateSection

MEMORY_DECODE_STEPS = 8  # decode steps after the memory workload's prefill: enough to grow the KV cache


@dataclass(frozen=True)
class Workload:
    """The measurement settings, from the recipe (what the source cache key and the report record)."""

    seq_len: int
    max_windows: int | None
    batch_size: int
    prefill_lengths: tuple[int, ...]
    decode_batch_sizes: tuple[int, ...]
    decode_prompt_len: int
    decode_new_tokens: int
    warmup: int
    repeats: int
    latency: bool
    memory: bool

    @classmethod
    def from_recipe(cls, section: ValidateSection, batch_size: int) -> Workload:
        return cls(section.seq_len, section.max_windows, batch_size, tuple(section.prefill_lengths),
                   tuple(section.decode_batch_sizes), section.decode_prompt_len, section.decode_new_tokens,
                   section.warmup, section.repeats, section.latency, section.memory)

    def as_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self.__dict__.items()}

    @property
    def memory_workload(self) -> dict:
        """Prefill the longest prompt at the largest batch, then a few decode steps: the peak of normal use."""
        return {"batch": max(self.decode_batch_sizes), "prompt_len": max(self.prefill_lengths),
                "new_tokens": MEMORY_DECODE_STEPS}


def measure_backend(runner: MeasuredRunner, files: ModelFiles, ids: torch.LongTensor, work: Workload,
                    say: Callable[[str], None], progress: bool, label: str) -> dict:
    """Everything measured on one model with one backend, as plain data."""
    say(f"  {label} [{runner.name}]: perplexity")
    result = {"perplexity": perplexity(runner, ids, work.seq_len, work.max_windows, work.batch_size,
                                       progress).as_dict()}
    if work.latency:
        say(f"  {label} [{runner.name}]: prefill at {_list(work.prefill_lengths)} tokens, "
            f"decode at batch {_list(work.decode_batch_sizes)}")
        result["prefill"] = {str(length): runner.prefill_latency(length, batch=1, warmup=work.warmup,
                                                                 repeats=work.repeats).as_dict()
                             for length in work.prefill_lengths}
        result["decode"] = {str(batch): runner.decode_throughput(batch=batch, prompt_len=work.decode_prompt_len,
                                                                 new_tokens=work.decode_new_tokens,
                                                                 warmup=work.warmup, repeats=work.repeats).as_dict()
                            for batch in work.decode_batch_sizes}
    if work.memory:
        say(f"  {label} [{runner.name}]: peak memory (in a subprocess)")
        result["memory"] = measure_memory(runner.name, files, **work.memory_workload).as_dict()
    result["size_bytes"] = size_on_disk(runner.name, files)
    return result


def size_on_disk(backend: str, files: ModelFiles) -> int:
    """Bytes a backend deploys: torch the checkpoint's weights, onnxruntime the export, tensorrt the engine."""
    if backend == "torch":
        return weights_bytes(files.checkpoint)
    if backend == "onnxruntime" and files.export is not None:
        return sum(f.stat().st_size for f in files.export.rglob("*") if f.is_file())
    if backend == "tensorrt" and files.build is not None:
        return sum(f.stat().st_size for f in engine_files(files.build))
    raise ValueError(f"no files of backend {backend}")


def weights_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in Path(directory).glob(pattern))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _list(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)
