"""LLM-Streamline's stability metric (Chen et al., arXiv 2403.19135, ICLR 2025), on next-token choices.

The paper's stability asks whether a pruned model is right where the original model is right, not only
as often: over the items of a multiple-choice task, it sums the weights of the items on which the two
models agree on correctness (both right or both wrong). Each item weighs as much as the original
model was decided on it: its weight is the softmax, over the items, of the standard deviation of the
original model's per-option perplexities (an item whose options the original model tells far apart
weighs more). 1.0 means the pruned model keeps every answer's correctness.

We have no multiple-choice suite offline, so the items are next-token choices on calibration text the
replacement was not fitted on: at every position the options are the true next token and the original
model's k - 1 likeliest other tokens, a model's answer is the option it gives the lowest perplexity
(the highest probability), and it is right when that is the true token. An option's score is its
log-perplexity, -log p (the paper's perplexity is exp of it): single-token perplexities span orders of
magnitude, and exp(std) of them would put all the weight on one item. docs/methods.md has the reading.

Pure math on logits; the caller runs the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def stability(original_correct: torch.Tensor, pruned_correct: torch.Tensor, original_scores: torch.Tensor) -> float:
    """Sum over items of softmax_i(std_j original_scores[i, j]) for the items where both models are right or
    both wrong. `original_correct`, `pruned_correct`: [N] booleans; `original_scores`: [N, options]."""
    if original_scores.ndim != 2 or original_scores.shape[1] < 2:
        raise ValueError(f"option scores must be [items, options >= 2], got {tuple(original_scores.shape)}")
    if not (original_correct.shape == pruned_correct.shape == original_scores.shape[:1]):
        raise ValueError(f"{tuple(original_correct.shape)} and {tuple(pruned_correct.shape)} correctness flags "
                         f"for {original_scores.shape[0]} items")
    if original_scores.shape[0] == 0:
        raise ValueError("stability needs at least one item")
    weights = torch.softmax(original_scores.double().std(dim=1, correction=0), dim=0)  # population std, as np.std
    return float(weights[original_correct.bool() == pruned_correct.bool()].sum())


def next_token_options(logits: torch.Tensor, targets: torch.Tensor, options: int) -> torch.Tensor:
    """[N, options] token ids: each position's true next token (column 0), then the `options` - 1 tokens
    `logits` [N, vocab] rank highest among the others."""
    if not 2 <= options <= logits.shape[-1]:
        raise ValueError(f"options must be between 2 and the vocabulary size {logits.shape[-1]}, got {options}")
    others = logits.float().clone()
    others.scatter_(1, targets.unsqueeze(1), float("-inf"))
    return torch.cat([targets.unsqueeze(1), others.topk(options - 1, dim=1).indices], dim=1)


def choose(logits: torch.Tensor, options: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each option's log-perplexity -log p [N, options] under `logits` [N, vocab], and whether the model's
    answer (the lowest, the first on a tie) is the true token in column 0 [N]."""
    scores = -torch.log_softmax(logits.float(), dim=-1).gather(1, options)
    return scores, scores.argmin(dim=1) == 0


_CHUNK = 256  # positions whose vocabulary-wide scores are worked on at once


@dataclass(frozen=True)
class StabilityReport:
    stability: float  # over every item of every window
    per_window: list[float]  # each window as a task of its own
    original_accuracy: float  # share of items the original model answers right
    pruned_accuracy: float
    items: int
    options: int

    def metrics(self) -> dict:
        return {"stability": round(self.stability, 6), "stability_per_window": [round(s, 6) for s in self.per_window],
                "stability_original_accuracy": round(self.original_accuracy, 6),
                "stability_pruned_accuracy": round(self.pruned_accuracy, 6), "stability_items": self.items,
                "stability_options": self.options}


@torch.no_grad()
def next_token_stability(original, pruned, windows: torch.Tensor, options: int = 4) -> StabilityReport:
    """Stability of `pruned` against `original` (causal LMs) on the next-token choices of `windows` [n, L]."""
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise ValueError(f"stability needs windows [n >= 1, length >= 2], got {tuple(windows.shape)}")
    device = next(original.parameters()).device
    flags, scores, per_window = [], [], []
    for window in windows:
        ids = window.unsqueeze(0).to(device)
        targets = ids[0, 1:]
        dense_logits = original(input_ids=ids).logits[0, :-1]
        rows = range(0, targets.shape[0], _CHUNK)  # a vocabulary-wide copy per chunk of positions, not per window
        choices = torch.cat([next_token_options(dense_logits[i:i + _CHUNK], targets[i:i + _CHUNK], options)
                             for i in rows])
        dense = [choose(dense_logits[i:i + _CHUNK], choices[i:i + _CHUNK]) for i in rows]
        dense_scores, dense_right = torch.cat([d[0] for d in dense]), torch.cat([d[1] for d in dense])
        del dense_logits
        pruned_logits = pruned(input_ids=ids).logits[0, :-1]
        pruned_right = torch.cat([choose(pruned_logits[i:i + _CHUNK], choices[i:i + _CHUNK])[1] for i in rows])
        del pruned_logits
        per_window.append(stability(dense_right, pruned_right, dense_scores))
        flags.append((dense_right.cpu(), pruned_right.cpu()))
        scores.append(dense_scores.cpu())
    dense_right = torch.cat([d for d, _ in flags])
    pruned_right = torch.cat([p for _, p in flags])
    return StabilityReport(stability(dense_right, pruned_right, torch.cat(scores)), per_window,
                           float(dense_right.double().mean()), float(pruned_right.double().mean()),
                           int(dense_right.numel()), options)
