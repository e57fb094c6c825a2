"""What the validate stage measures: per model and backend perplexity, memory and size (`measure_backend`),
and the timings of every model and backend side by side, in the same rounds (`time_side_by_side`).

Timings are never taken one model at a time: the speed-ups compare the source and the sculpted
model round by round (`speed_block`), so both must be timed in the same loop of the same run.
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

from ...measures.latency import decode_result, interleave, summarise
from ...measures.perplexity import perplexity
from ...measures.runners import MeasuredRunner
from ...measures.speedup import paired_speedup
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
    def perplexity_settings(self) -> dict:
        """What a perplexity depends on besides the model and the text (the source cache's key)."""
        return {"seq_len": self.seq_len, "max_windows": self.max_windows, "batch_size": self.batch_size}

    @property
    def engine_needs(self) -> dict[str, dict[str, int]]:
        """What a fixed-shape backend (a TensorRT engine's profiles) must take to run this workload, by the setting
        that asks for it: prompt tokens, sequences per call, cache slots while decoding (the dummy slot included)."""
        prompts = {"validate.seq_len": self.seq_len, "validate.prefill_lengths": max(self.prefill_lengths),
                   "validate.decode_prompt_len": self.decode_prompt_len}
        cached = {"validate.decode_prompt_len + decode_new_tokens": self.decode_prompt_len + self.decode_new_tokens}
        if self.memory:
            cached["validate.prefill_lengths (memory workload)"] = max(self.prefill_lengths) + MEMORY_DECODE_STEPS
        return {"prompts": prompts, "batches": {"validate.decode_batch_sizes": max(self.decode_batch_sizes)},
                "cached": cached}

    @property
    def memory_workload(self) -> dict:
        """Prefill the longest prompt at the largest batch, then a few decode steps: the peak of normal use."""
        return {"batch": max(self.decode_batch_sizes), "prompt_len": max(self.prefill_lengths),
                "new_tokens": MEMORY_DECODE_STEPS}


def measure_backend(runner: MeasuredRunner, files: ModelFiles, ids: torch.LongTensor, work: Workload,
                    say: Callable[[str], None], progress: bool, label: str) -> dict:
    """Perplexity, peak memory (when asked) and size on disk of one model with one backend, as plain data.
    Timings are not taken here: see `time_side_by_side`."""
    say(f"  {label} [{runner.name}]: perplexity")
    result = {"perplexity": perplexity(runner, ids, work.seq_len, work.max_windows, work.batch_size,
                                       progress).as_dict()}
    if work.memory:
        result["memory"] = memory(runner.name, files, work, say, label)
    result["size_bytes"] = size_on_disk(runner.name, files)
    return result


def memory(backend: str, files: ModelFiles, work: Workload, say: Callable[[str], None], label: str) -> dict:
    say(f"  {label} [{backend}]: peak memory (in a subprocess)")
    return measure_memory(backend, files, **work.memory_workload).as_dict()


def time_side_by_side(runners: dict[str, MeasuredRunner], work: Workload, say: Callable[[str], None]
                      ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Every runner timed in the same rounds (`latency.interleave`), per prefill length and decode batch size:
    {label: {"prefill": {length: [seconds, ...]}, "decode": {batch: [seconds per step, ...]}}}, sample i of
    every runner from round i. The first two runners are the pair a speed-up compares (they alternate
    which goes first); each call is one timed prefill or one timed decode loop after an untimed prefill."""
    labels = list(runners)
    say(f"  timing {', '.join(labels)} side by side: {work.warmup} warm-up and {work.repeats} timed rounds, "
        f"prefill at {_list(work.prefill_lengths)} tokens, decode at batch {_list(work.decode_batch_sizes)}")
    samples: dict[str, dict[str, dict[str, list[float]]]] = {label: {"prefill": {}, "decode": {}} for label in labels}
    for length in work.prefill_lengths:
        calls = [_prefill_call(runner, length) for runner in runners.values()]
        for label, timed in zip(labels, interleave(calls, work.warmup, work.repeats)):
            samples[label]["prefill"][str(length)] = timed
    for batch in work.decode_batch_sizes:
        calls = [_decode_call(runner, batch, work) for runner in runners.values()]
        for label, timed in zip(labels, interleave(calls, work.warmup, work.repeats)):
            samples[label]["decode"][str(batch)] = timed
    return samples


def _prefill_call(runner: MeasuredRunner, length: int) -> Callable[[], float]:
    return lambda: runner.prefill_latency(length, batch=1, warmup=0, repeats=1).median_s


def _decode_call(runner: MeasuredRunner, batch: int, work: Workload) -> Callable[[], float]:
    return lambda: runner.decode_throughput(batch=batch, prompt_len=work.decode_prompt_len,
                                            new_tokens=work.decode_new_tokens, warmup=0, repeats=1).step.median_s


def timings(samples: dict[str, dict[str, list[float]]], work: Workload) -> dict:
    """One runner's samples as the report gives them: prefill medians and decode tokens/s with their spread."""
    return {"prefill": {length: summarise(timed).as_dict() for length, timed in samples["prefill"].items()},
            "decode": {batch: decode_result(timed, int(batch), work.decode_prompt_len, work.decode_new_tokens).as_dict()
                       for batch, timed in samples["decode"].items()}}


def speed_block(samples: dict[str, dict[str, dict[str, list[float]]]], work: Workload,
                compared: tuple[str, str] | None) -> dict:
    """How the timings were taken, and the speed-ups of `compared` = (reference, candidate) round by round:
    prefill (reference time / candidate time) per length, decode (the same per step, i.e. candidate tokens/s /
    reference tokens/s) per batch size, each the median ratio with its interquartile range."""
    block = {"method": "interleaved", "warmup": work.warmup, "rounds": work.repeats, "timed": list(samples),
             "compared": list(compared) if compared else None, "prefill": {}, "decode": {}}
    if compared:
        reference, candidate = (samples[label] for label in compared)
        for kind in ("prefill", "decode"):
            block[kind] = {key: paired_speedup(reference[kind][key], candidate[kind][key]).as_dict()
                           for key in candidate[kind]}
    return block


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
