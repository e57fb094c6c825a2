"""A tiny model trained for a few seconds on a repetitive text, so pruning measurably hurts it.

A random tiny model predicts almost uniformly: cutting it changes its perplexity by noise, in
either direction. After a short training run it has learnt the text, and a smaller cut of it is
reliably worse than a larger one — what gate and baseline tests need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.factories import char_tokenizer, tiny_model

CORPUS = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(400))


def trained_checkpoint(directory: Path, text: str = CORPUS, steps: int = 60, seed: int = 0) -> Path:
    """Train `tiny_model("llama")` on `text` (char tokens) and save it with its tokenizer in `directory`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread, much faster on a busy machine
    try:
        return _train(directory, text, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(directory: Path, text: str, steps: int, seed: int) -> Path:
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    model = tiny_model("llama", seed).train()
    ids = torch.tensor(tokenizer(text)["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - 65, (8,), generator=generator)
        batch = torch.stack([ids[s: s + 64] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
