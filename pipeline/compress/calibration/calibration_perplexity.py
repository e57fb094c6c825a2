"""Calibration perplexity: the score architecture choices are compared by (lower is better)."""

from __future__ import annotations

import torch

from pipeline.measures.perplexity import perplexity
from pipeline.measures.runners import TorchRunner


@torch.no_grad()
def calibration_perplexity(model, windows: torch.Tensor, batch_size: int = 1) -> float:
    """Perplexity of `model` on fixed calibration windows [n, L] (never evaluation text)."""
    result = perplexity(TorchRunner(model), windows.reshape(-1), windows.shape[1], batch_size=batch_size,
                        progress=False)
    return result.ppl
