"""Backends behind one interface: token ids in, logits out, so any two can be compared.

`Runner` is what perplexity needs. `MeasuredRunner` adds what the validate stage times and
compares: prefill latency, decode throughput and greedy generation. The ONNX Runtime runner
(`validators/ort_runner.py: OrtRunner`) implements the same methods; `validators.backends`
opens whichever backends an artifact has. This module is the interface between them and
the code that only needs some runner (compression, the exporters' parity check).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from . import latency
from .latency import DecodeResult, Timing


@runtime_checkable
class Runner(Protocol):
    """A backend that scores token ids: [B, L] int64 in, [B, L, V] float32 CPU logits out."""

    name: str

    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor: ...


@runtime_checkable
class MeasuredRunner(Runner, Protocol):
    """A runner the validate stage can time: prefill, decode with a KV cache, greedy generation."""

    def generate(self, input_ids: torch.LongTensor, max_new_tokens: int) -> torch.LongTensor: ...

    def prefill_latency(self, seq_len: int, batch: int = 1, warmup: int = 1, repeats: int = 5) -> Timing: ...

    def decode_throughput(self, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32, warmup: int = 1,
                          repeats: int = 3) -> DecodeResult: ...


class TorchRunner:
    """A PyTorch causal LM as a runner (eval mode, no gradients; logits without a KV cache)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None) -> None:
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids.to(self.device), use_cache=False)
        return output.logits.float().cpu()

    def generate(self, input_ids: torch.LongTensor, max_new_tokens: int) -> torch.LongTensor:
        """The prompt followed by `max_new_tokens` greedy tokens, [B, L + new] on the CPU."""
        return latency.greedy_generate(self.model, input_ids, max_new_tokens)

    def prefill_latency(self, seq_len: int, batch: int = 1, warmup: int = 1, repeats: int = 5) -> Timing:
        return latency.prefill_latency(self.model, seq_len, batch, warmup, repeats)

    def decode_throughput(self, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32, warmup: int = 1,
                          repeats: int = 3) -> DecodeResult:
        return latency.decode_throughput(self.model, batch, prompt_len, new_tokens, warmup, repeats)
