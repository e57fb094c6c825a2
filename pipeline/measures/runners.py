"""Backends behind one interface: token ids in, logits out, so any two can be compared.

`Runner` is what perplexity needs. `MeasuredRunner` adds what the validate stage times and
compares: prefill latency, decode throughput and greedy generation. `DecodingRunner` adds the
logits of each greedy step through the KV cache, which the exporters' parity check compares.
`TorchRunner` (here) runs a PyTorch model; the exported graph runs behind the same methods in
`validators/graph_runner.py: GraphRunner`, one KV-cache loop with two backends: ONNX Runtime
(`validators/ort_runner.py: OrtRunner`, the export stage's model.onnx) and TensorRT
(`validators/trt_runner.py: TrtRunner`, the build stage's model.plan). `validators.backends`
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


@runtime_checkable
class DecodingRunner(Runner, Protocol):
    """A runner whose greedy decoding through its KV cache can be compared logit for logit (the export check)."""

    def greedy_logits(self, input_ids: torch.LongTensor, new_tokens: int) -> torch.Tensor:
        """[B, new_tokens, V] float32 CPU: the last position's logits after the prompt, then after each greedy
        token fed back through the KV cache (token i is the argmax of step i's logits)."""
        ...


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

    @torch.no_grad()
    def greedy_logits(self, input_ids: torch.LongTensor, new_tokens: int) -> torch.Tensor:
        """See `DecodingRunner.greedy_logits`."""
        out = self.model(input_ids.to(self.device), use_cache=True)
        steps = [out.logits[:, -1].float().cpu()]
        for _ in range(new_tokens - 1):
            token = steps[-1].argmax(-1)
            out = self.model(token[:, None].to(self.device), past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[:, -1].float().cpu())
        return torch.stack(steps, dim=1)

    def prefill_latency(self, seq_len: int, batch: int = 1, warmup: int = 1, repeats: int = 5) -> Timing:
        return latency.prefill_latency(self.model, seq_len, batch, warmup, repeats)

    def decode_throughput(self, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32, warmup: int = 1,
                          repeats: int = 3) -> DecodeResult:
        return latency.decode_throughput(self.model, batch, prompt_len, new_tokens, warmup, repeats)
