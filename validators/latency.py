"""Latency of a causal LM: prefill time at a sequence length, decode tokens/s with a KV cache.

Every measurement warms up first, then repeats and reports the median with its spread
(10th/90th percentiles): single timings on a shared machine are noise. Compare ratios
measured in the same process, not absolute numbers across runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return Timing(ordered[0], ordered[0], ordered[0], 1)
    deciles = statistics.quantiles(ordered, n=10, method="inclusive")
    return Timing(statistics.median(ordered), deciles[0], deciles[-1], len(ordered))


def time_call(fn: Callable[[], object], warmup: int = 1, repeats: int = 5, device: torch.device | None = None) -> Timing:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs (CUDA work is synchronised)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return summarise(samples)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _ids(model: torch.nn.Module, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator).to(_device(model))


@torch.no_grad()
def prefill_latency(model: torch.nn.Module, seq_len: int, batch: int = 1, warmup: int = 1, repeats: int = 5) -> Timing:
    """Time to run a prompt of `seq_len` tokens through the model, filling its KV cache (logits of the last token only)."""
    ids = _ids(model, batch, seq_len)
    return time_call(lambda: model(ids, use_cache=True, logits_to_keep=1), warmup, repeats, _device(model))


@dataclass(frozen=True)
class DecodeResult:
    tokens_per_s: float  # batch x new tokens / median time of the decode loop
    step: Timing  # one decode step (every sequence of the batch gains one token)
    batch: int
    prompt_len: int
    new_tokens: int

    def as_dict(self) -> dict:
        return {**asdict(self), "step": self.step.as_dict()}


@torch.no_grad()
def decode_throughput(model: torch.nn.Module, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32,
                      warmup: int = 1, repeats: int = 3) -> DecodeResult:
    """Greedy decoding with a KV cache, one token per step after a prefilled prompt; the prefill is not timed."""
    ids = _ids(model, batch, prompt_len)
    device = _device(model)

    def decode_loop() -> None:
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / new_tokens)

    samples: list[float] = []
    for _ in range(warmup):
        decode_loop()
    samples.clear()
    for _ in range(repeats):
        decode_loop()
    step = summarise(samples)
    return DecodeResult(tokens_per_s=batch / step.median_s, step=step, batch=batch, prompt_len=prompt_len,
                        new_tokens=new_tokens)
