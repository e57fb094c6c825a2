"""Latency of a causal LM: prefill time at a sequence length, decode tokens/s with a KV cache.

Every measurement warms up first, then repeats and reports the median with its spread
(10th/90th percentiles): single timings on a shared machine are noise. Compare ratios
measured side by side, not absolute numbers across runs: `interleave` times several models in
the same rounds (A B, B A, ...), so each round gives a ratio (`speedup.paired_speedup`).

The torch functions take a model; `time_decode` times any backend's prefill/step callables,
so every runner reports decode throughput the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Callable, TypeVar

import torch

State = TypeVar("State")


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


def interleave(calls: Sequence[Callable[[], float]], warmup: int, repeats: int) -> list[list[float]]:
    """Time several things side by side: `warmup` untimed rounds, then `repeats` rounds in which every call
    runs once. Each call measures itself and returns seconds. The first two calls (the pair a speed-up
    compares) swap places every round (A B C, B A C, A B C, ...), so neither always runs first, nor always
    right after the others. Returns each call's samples in round order: sample i of every call is round i's."""
    samples: list[list[float]] = [[] for _ in calls]
    for round_index in range(warmup + repeats):
        order = list(range(len(calls)))
        if round_index % 2 and len(order) > 1:
            order[0], order[1] = order[1], order[0]
        for index in order:
            seconds = calls[index]()
            if round_index >= warmup:
                samples[index].append(seconds)
    return samples


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_ids(vocab_size: int, batch: int, length: int, seed: int = 0) -> torch.LongTensor:
    """Seeded token ids [batch, length] on the CPU: the same prompt for every backend and every run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def _ids(model: torch.nn.Module, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return random_ids(model.config.vocab_size, batch, length, seed).to(_device(model))


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


def time_decode(prefill: Callable[[], State], step: Callable[[State], State], batch: int, prompt_len: int,
                new_tokens: int, warmup: int = 1, repeats: int = 3, sync: Callable[[], None] = lambda: None
                ) -> DecodeResult:
    """Decode tokens/s of any backend: `prefill()` fills a KV cache (untimed), then `new_tokens` calls of
    `step(state) -> state`, each adding one token per sequence, are timed; warm-up loops first."""
    samples: list[float] = []
    for index in range(warmup + repeats):
        state = prefill()
        sync()
        start = time.perf_counter()
        for _ in range(new_tokens):
            state = step(state)
        sync()
        if index >= warmup:
            samples.append((time.perf_counter() - start) / new_tokens)
    return decode_result(samples, batch, prompt_len, new_tokens)


def decode_result(step_samples: list[float], batch: int, prompt_len: int, new_tokens: int) -> DecodeResult:
    """Decode throughput from the seconds per step of each timed loop."""
    timing = summarise(step_samples)
    return DecodeResult(tokens_per_s=batch / timing.median_s, step=timing, batch=batch, prompt_len=prompt_len,
                        new_tokens=new_tokens)


@torch.no_grad()
def decode_throughput(model: torch.nn.Module, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32,
                      warmup: int = 1, repeats: int = 3) -> DecodeResult:
    """Greedy decoding with a KV cache, one token per step after a prefilled prompt; the prefill is not timed."""
    ids = _ids(model, batch, prompt_len)
    device = _device(model)

    def prefill():
        out = model(ids, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits[:, -1:].argmax(-1)

    def step(state):
        cache, token = state
        out = model(token, past_key_values=cache, use_cache=True)
        return out.past_key_values, out.logits[:, -1:].argmax(-1)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return time_decode(prefill, step, batch, prompt_len, new_tokens, warmup, repeats, sync)


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, input_ids: torch.LongTensor, max_new_tokens: int) -> torch.LongTensor:
    """Greedy continuation with a KV cache: the prompt followed by `max_new_tokens` new ids [B, L + new] (CPU)."""
    ids = input_ids.to(_device(model))
    out = model(ids, use_cache=True, logits_to_keep=1)
    tokens = [out.logits[:, -1:].argmax(-1)]
    for _ in range(max_new_tokens - 1):
        out = model(tokens[-1], past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1:].argmax(-1))
    return torch.cat([ids, *tokens], dim=1).cpu()
