"""Perplexity with the pruning papers' protocol, on any runner.

The token ids are cut into non-overlapping windows of `seq_len` (the tail dropped); in
each window every token after the first is predicted from the ones before it; the
perplexity is exp of the mean token negative log-likelihood over all windows, computed
in float64 from log_softmax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from pipeline.data import evaluation_windows
from pipeline.errors import SculptError

from .runners import Runner

# rows of logits turned to float64 log-probabilities at a time: 256 × 49152 vocab ≈ 100 MB
NLL_CHUNK_ROWS = 256


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float  # exp(nll)
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # tokens scored: windows × (seq_len - 1)
    windows: int
    seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)


def summed_nll(logits: torch.Tensor, targets: torch.LongTensor) -> tuple[float, int]:
    """Summed negative log-likelihood (float64) of `targets` [...] under `logits` [..., V], and the token count.

    `logits[..., i, :]` must already be the prediction for `targets[..., i]` (shifted by the caller).
    """
    vocab = logits.shape[-1]
    rows, targets = logits.reshape(-1, vocab), targets.reshape(-1)
    if rows.shape[0] != targets.shape[0]:
        raise ValueError(f"{rows.shape[0]} logit rows for {targets.shape[0]} targets")
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, rows.shape[0], NLL_CHUNK_ROWS):
        log_probs = rows[start: start + NLL_CHUNK_ROWS].to(torch.float64).log_softmax(dim=-1)
        total -= log_probs.gather(1, targets[start: start + NLL_CHUNK_ROWS, None].to(log_probs.device)).sum()
    return total.item(), targets.numel()


def perplexity(runner: Runner, ids: torch.LongTensor, seq_len: int, max_windows: int | None = None,
               batch_size: int = 1, progress: bool = True) -> PerplexityResult:
    """Perplexity of `runner` on 1-D token `ids` cut into non-overlapping windows of `seq_len`."""
    if seq_len < 2:
        raise SculptError(f"sequence length {seq_len} leaves no token to predict: pass a sequence length of at least 2")
    if batch_size < 1:
        raise SculptError(f"batch size {batch_size} is not positive: pass a batch size of at least 1")
    windows = evaluation_windows(ids, seq_len, max_windows)
    nll_sum, tokens = 0.0, 0
    bar = tqdm(total=len(windows), desc=f"perplexity ({runner.name})", unit="window",
               disable=None if progress else True)
    with bar:
        for batch in windows.split(batch_size):
            logits = runner.logits(batch)
            if logits.shape[:2] != batch.shape:
                raise ValueError(f"runner {runner.name!r} returned logits of shape {tuple(logits.shape)} "
                                 f"for input of shape {tuple(batch.shape)}")
            for row_logits, row_ids in zip(logits, batch):  # one window at a time keeps float64 memory bounded
                window_nll, count = summed_nll(row_logits[:-1], row_ids[1:])
                nll_sum, tokens = nll_sum + window_nll, tokens + count
            del logits
            bar.update(len(batch))
            bar.set_postfix(ppl=f"{_exp(nll_sum / tokens):.3f}")
    nll = nll_sum / tokens
    return PerplexityResult(ppl=_exp(nll), nll=nll, tokens=tokens, windows=len(windows), seq_len=seq_len)


def _exp(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float64).exp())
