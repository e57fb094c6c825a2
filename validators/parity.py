"""Parity between two backends of the same model: logits on fixed prompts and greedy continuations.

The prompts are fixed text (tokenised with the model's own tokenizer), so every run and every
backend sees the same input. Logit differences are absolute (the logits' own scale), top-1
agreement is the share of positions whose most likely next token is the same, and the greedy
match counts the generated tokens that agree before the first difference.

Greedy agreement is the measure a quantized backend is judged by: the reference generates its
greedy continuation, the other backend scores that same sequence, and the agreement is the share
of generated positions where the other backend's most likely token is the reference's. Unlike the
greedy match, one near-tie that flips early does not zero it: every position is judged on the same
prefix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pipeline.measures.runners import MeasuredRunner

FIXED_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 1905, Albert Einstein published four papers that",
    "Once upon a time, in a small village by the sea,",
)


def prompt_ids(tokenizer, prompts: tuple[str, ...] = FIXED_PROMPTS) -> list[torch.LongTensor]:
    """Each prompt as [1, L] token ids (no special tokens beyond the tokenizer's defaults)."""
    return [torch.tensor([tokenizer(text, return_attention_mask=False)["input_ids"]], dtype=torch.long)
            for text in prompts]


@dataclass(frozen=True)
class LogitParity:
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float  # share of positions with the same argmax, 0..1
    positions: int

    def as_dict(self) -> dict:
        return asdict(self)


def logit_parity(reference: list[torch.Tensor], other: list[torch.Tensor]) -> LogitParity:
    """Compare per-prompt logits [1, L, V] of two backends (same prompts, same order)."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference prompts, {len(other)} to compare")
    worst, total, agree, positions = 0.0, 0.0, 0, 0
    for ref, oth in zip(reference, other):
        if ref.shape != oth.shape:
            raise ValueError(f"logits of shape {tuple(oth.shape)} to compare with {tuple(ref.shape)}")
        diff = (ref.double() - oth.double()).abs()
        worst = max(worst, diff.max().item())
        total += diff.mean(dim=-1).sum().item()
        agree += (ref.argmax(-1) == oth.argmax(-1)).sum().item()
        positions += ref.shape[0] * ref.shape[1]
    return LogitParity(worst, total / positions, agree / positions, positions)


def greedy_match(reference: torch.LongTensor, other: torch.LongTensor, new_tokens: int) -> int:
    """How many of the last `new_tokens` generated ids agree before the first difference (worst row)."""
    ref, oth = reference[:, -new_tokens:], other[:, -new_tokens:]
    same = (ref == oth).long().cumprod(dim=1)  # 1 until the first difference, 0 after
    return int(same.sum(dim=1).min().item())


def greedy_agreement(generated: torch.LongTensor, logits: torch.Tensor, new_tokens: int) -> int:
    """How many of the last `new_tokens` ids of `generated` [B, L] (a reference's greedy continuation) are also
    the argmax of `logits` [B, L, V] (another backend scoring that same sequence) at the position before them."""
    predicted = logits[:, -new_tokens - 1:-1].argmax(-1)
    return int((predicted == generated[:, -new_tokens:]).sum().item())


def reference_answers(reference: MeasuredRunner, prompts: list[torch.LongTensor], new_tokens: int) -> dict:
    """What `reference` answers on `prompts` (logits, greedy continuations), kept so that it can be closed before
    another backend is opened (a big model is never held twice)."""
    return {"name": reference.name, "logits": [reference.logits(ids) for ids in prompts],
            "generated": [reference.generate(ids, new_tokens) for ids in prompts]}


def compare_answers(answers: dict, other: MeasuredRunner, prompts: list[torch.LongTensor], new_tokens: int) -> dict:
    """Logit parity, greedy match and greedy agreement of `other` against a reference's `answers` on `prompts`."""
    logits = logit_parity(answers["logits"], [other.logits(ids) for ids in prompts])
    matches, agreed = [], 0
    for ids, generated in zip(prompts, answers["generated"]):
        matches.append(greedy_match(generated, other.generate(ids, new_tokens), new_tokens))
        agreed += greedy_agreement(generated, other.logits(generated), new_tokens)
    return {"reference": answers["name"], **logits.as_dict(), "greedy_match": min(matches),
            "greedy_tokens": new_tokens, "greedy_agreement": agreed / (new_tokens * len(prompts))}


def compare_runners(reference: MeasuredRunner, other: MeasuredRunner, prompts: list[torch.LongTensor],
                    new_tokens: int) -> dict:
    """Logit parity, greedy match and greedy agreement of `other` against `reference` on `prompts`."""
    return compare_answers(reference_answers(reference, prompts, new_tokens), other, prompts, new_tokens)
