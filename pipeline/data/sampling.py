"""Token ids from a corpus split: evaluation windows and seeded calibration windows.

Texts are tokenised once, with the tokenizer's defaults, as the papers do: a Llama
tokenizer puts one BOS at the start of the whole text; SmolLM2's adds nothing
(`add_bos_token` is false), so its ids are the plain BPE of the text.
"""

from __future__ import annotations

import torch

from ..errors import SculptError
from .corpora import CorpusText

# c4 calibration: how many random documents each window may try before giving up on finding a long one
DOCUMENT_TRIES_PER_WINDOW = 1000


def tokenize(tokenizer, text: str) -> torch.LongTensor:
    """1-D token ids of `text` (the tokenizer's default special tokens; no length warning)."""
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def evaluation_ids(tokenizer, corpus: CorpusText, seq_len: int) -> torch.LongTensor:
    """The evaluation split as one 1-D id tensor (c4: its first 256 × seq_len tokens, as SparseGPT)."""
    ids = tokenize(tokenizer, corpus.text)
    if corpus.eval_windows_cap is not None:
        ids = ids[: corpus.eval_windows_cap * seq_len]
    return ids


def evaluation_windows(ids: torch.LongTensor, seq_len: int, max_windows: int | None = None) -> torch.LongTensor:
    """Non-overlapping [windows, seq_len] windows from the start of `ids`; the tail is dropped."""
    ids = ids.reshape(-1)
    if seq_len < 1:
        raise SculptError(f"sequence length {seq_len} is not positive: pass a sequence length of at least 2")
    if max_windows is not None and max_windows < 1:
        raise SculptError(f"max_windows is {max_windows}: allow at least one window, or leave it unset for all")
    count = ids.numel() // seq_len
    if count < 1:
        raise SculptError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of {seq_len}: "
                          "lower the sequence length or use a longer corpus")
    if max_windows is not None:
        count = min(count, max_windows)
    return ids[: count * seq_len].view(count, seq_len)


def sample_windows(ids: torch.LongTensor, n: int, length: int, seed: int, what: str = "the text") -> torch.LongTensor:
    """[n, length] windows at seeded random starts inside `ids` (reproducible across runs and machines)."""
    ids = ids.reshape(-1)
    _check_counts(n, length)
    if ids.numel() < length:
        raise SculptError(f"{what} has {ids.numel()} tokens, fewer than the calibration window length {length}: "
                          f"lower the calibration length to at most {ids.numel()}, or use a longer corpus")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length + 1, (n,), generator=generator)
    return torch.stack([ids[start: start + length] for start in starts.tolist()])


def calibration_windows(tokenizer, corpus: CorpusText, n: int, length: int, seed: int) -> torch.LongTensor:
    """[n, length] calibration windows from a corpus split, seeded and reproducible.

    Most corpora are tokenised whole and windows start anywhere; a corpus sampled by
    document (c4) draws a random document longer than the window, then a window inside
    it (SparseGPT's loader), so a training shard is never tokenised whole.
    """
    what = f"corpus {corpus.name!r} ({corpus.split})"
    if not corpus.by_document:
        return sample_windows(tokenize(tokenizer, corpus.text), n, length, seed, what)
    _check_counts(n, length)
    if not corpus.documents:
        raise SculptError(f"{what} has no documents: use another corpus")
    generator = torch.Generator().manual_seed(seed)
    windows = []
    for _ in range(n):
        for _ in range(DOCUMENT_TRIES_PER_WINDOW):
            pick = int(torch.randint(0, len(corpus.documents), (1,), generator=generator))
            ids = tokenize(tokenizer, corpus.documents[pick])
            if ids.numel() > length:
                start = int(torch.randint(0, ids.numel() - length, (1,), generator=generator))
                windows.append(ids[start: start + length])
                break
        else:
            raise SculptError(f"{what}: none of {DOCUMENT_TRIES_PER_WINDOW} random documents is longer than "
                              f"the calibration window length {length} tokens: lower the calibration length")
    return torch.stack(windows)


def _check_counts(n: int, length: int) -> None:
    if n < 1 or length < 1:
        raise SculptError(f"calibration needs at least one window of at least one token (got {n} windows of "
                          f"{length}): pass a positive number of samples and length")
