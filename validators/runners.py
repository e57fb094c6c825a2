"""Backends behind one interface: token ids in, logits out, so any two can be compared."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Runner(Protocol):
    """A backend that scores token ids: [B, L] int64 in, [B, L, V] float32 CPU logits out."""

    name: str

    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor: ...


class TorchRunner:
    """A PyTorch causal LM as a runner (eval mode, no gradients, no KV cache)."""

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
