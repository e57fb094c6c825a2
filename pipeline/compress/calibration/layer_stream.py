"""Feed calibration windows through a decoder one layer at a time.

Only one layer's activations are live at once (plus the residual stream of every
window), so statistics for big models fit in memory, and a layer can be changed
(pruned, reformed) before the next one sees its output — the sequential scheme of
SparseGPT/Wanda. Works for dense family models and sculpted models alike, and for a streamed source
(pipeline/models/lazy_weights.py) whose weights stay on disk: the stream reads the embeddings to start, and
each layer it runs from `run` until `advance` (or inside `hold`), so only one decoder layer is in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from pipeline.compress.calibration.low_rank_moment import LowRankMoment
from pipeline.models.adapters import FamilyAdapter
from pipeline.models.families import FULL, SLIDING
from pipeline.models.lazy_weights import lazy_weights, materialised

_MASKS = {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}


class LayerStream:
    """The residual stream of every calibration window, advanced layer by layer.

    Each layer attends with its own kind's mask and RoPE table (full or sliding window: the adapter
    says which kind each layer of `model` is; a layer sliced on its own carries `attention_kind`)."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int = 1) -> None:
        self.model = model
        self.adapter = adapter
        lazy = lazy_weights(model)
        device = lazy.device if lazy is not None else adapter.embed_tokens(model).weight.device
        kinds = adapter.layer_kinds(model)
        self._kinds = {id(layer): kind for layer, kind in zip(adapter.layers(model), kinds)}
        self._only_kind = kinds[0] if len(set(kinds)) == 1 else None
        self._streamed = set(self._kinds) if lazy is not None else set()  # layers read from disk when run
        self._held: tuple[int, ExitStack] | None = None  # the streamed layer read by `run`, until `advance`
        with torch.no_grad(), materialised(model, [adapter.embed_tokens(model)]):
            self.hidden = [adapter.embed(model, chunk.to(device)) for chunk in windows.split(batch_size)]
            first = self.hidden[0][:1]  # batch 1: the mask and rotary tables broadcast over any batch
            positions = torch.arange(first.shape[1], device=device).unsqueeze(0)
            self.position_tables = adapter.position_embeddings(model, first, positions)
            self.masks = {kind: _MASKS[kind](config=model.config, inputs_embeds=first, attention_mask=None,
                                             past_key_values=None, position_ids=positions)
                          for kind in sorted(set(kinds))}

    def kind(self, layer: nn.Module) -> str:
        """The attention kind of `layer`: one of the model's own layers, or a copy or slice of one, which
        carries its kind (a sculpted layer's `attention_kind`, a family attention's `layer_type`)."""
        kind = getattr(layer, "attention_kind", None) or self._kinds.get(id(layer))
        if kind is None:
            kind = getattr(getattr(layer, self.adapter.family.attention, None), "layer_type", None)
        if kind not in self.masks:
            kind = self._only_kind
        if kind is None:
            raise ValueError("this layer is not one of the stream's model and does not say its attention kind")
        return kind

    def mask(self, layer: nn.Module) -> torch.Tensor | None:
        return self.masks.get(self.kind(layer))

    def position_embeddings(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return self.position_tables[self.kind(layer)]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    @torch.no_grad()
    def run(self, layer: nn.Module, hidden: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Outputs of `layer` for every window (the stream itself is not advanced).

        A layer of a streamed model is read from disk here and stays in memory until `advance`, so a caller
        can read its weights (scores, statistics) between the two."""
        if id(layer) in self._streamed and (self._held is None or self._held[0] != id(layer)):
            self.release()
            stack = ExitStack()
            stack.enter_context(materialised(self.model, [layer]))
            self._held = (id(layer), stack)
        return [self._call(layer, h) for h in (self.hidden if hidden is None else hidden)]

    def advance(self, outputs: list[torch.Tensor]) -> None:
        self.hidden = outputs
        self.release()

    def release(self) -> None:
        """Give back the streamed layer `run` read (nothing to do for a model in memory)."""
        if self._held is not None:
            held, self._held = self._held, None
            held[1].close()

    def hold(self, *modules: nn.Module):
        """A context in which `modules` of the stream's model hold their weights (read from disk when streamed)."""
        return materialised(self.model, modules)

    def _call(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = layer(hidden, attention_mask=self.mask(layer), position_embeddings=self.position_embeddings(layer),
                    past_key_values=None)
        return out[0] if isinstance(out, tuple) else out


GRAM_BLOCK = 512  # columns per block row of X^T X (see GramAccumulator.add)


class GramAccumulator:
    """Running sums over every token fed to a linear layer's input (float64).

    `full` keeps X^T X (for least squares and correlations); otherwise only its diagonal,
    the per-channel sum of squares, which is all activation-norm and variance scores need.
    The plain sum is always kept, for means and variances.

    While a full accumulator has seen at most half as many tokens as inputs it keeps the tokens themselves
    (float32 rows, at most a quarter of X^T X's float64 bytes); `second_moment` gives them as a `LowRankMoment`,
    whose solves need no n x n matrix and, below that half, fewer flops than the n^3 ones. Every other reader,
    and the window that passes the half, folds them into X^T X one window at a time: the same sums as if they
    had been added to it directly.
    """

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self._sum_of_squares: torch.Tensor | None = None  # upper triangle of X^T X, or its diagonal when not full
        self._diagonal: torch.Tensor | None = None  # diag(X^T X), kept once take_mean() gave the rest away
        self._rows: list[torch.Tensor] = []  # the windows seen, while at most inputs / 2 tokens (full only)
        self.total: torch.Tensor | None = None  # sum of x
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        self.total += x.sum(dim=0)
        self.tokens += x.shape[0]
        if self.full and self._sum_of_squares is None and self._diagonal is None and self.tokens * 2 <= x.shape[1]:
            self._rows.append(x.clone())  # a copy: the caller's tensor may be reused
            return
        self._fold()
        self._accumulate(x)

    def _accumulate(self, x: torch.Tensor) -> None:
        if self._sum_of_squares is None:
            shape = (x.shape[1], x.shape[1]) if self.full else (x.shape[1],)
            self._sum_of_squares = torch.zeros(shape, dtype=torch.float64, device=x.device)
        # A window's partial product is exact enough in float32; the running sum is float64.
        if self.full:  # block rows of the upper triangle only: ~40% fewer flops than x.T @ x for wide inputs
            for start in range(0, x.shape[1], GRAM_BLOCK):
                stop = start + GRAM_BLOCK
                self._sum_of_squares[start:stop, start:] += x[:, start:stop].T @ x[:, start:]
        else:
            self._sum_of_squares += x.pow(2).sum(dim=0)

    def _fold(self) -> None:
        """The kept rows into X^T X, window by window (as `add` would have summed them)."""
        rows, self._rows = self._rows, []
        for x in rows:
            self._accumulate(x)

    def second_moment(self) -> torch.Tensor | LowRankMoment:
        """E[x x^T]: as its token rows (`LowRankMoment`, float64) while the accumulator keeps them (at most half
        as many tokens as inputs), else as the matrix (`mean`)."""
        if not self._rows:
            return self.mean()
        return LowRankMoment(torch.cat(self._rows).double().div_(max(self.tokens, 1) ** 0.5))

    def take_second_moment(self) -> torch.Tensor | LowRankMoment:
        """`second_moment`, given up as `take_mean` does (its other statistics stay)."""
        if not self._rows:
            return self.take_mean()
        moment, self._rows = self.second_moment(), []
        self._diagonal = moment.diagonal() * self.tokens
        return moment

    @property
    def gram(self) -> torch.Tensor:
        """X^T X summed over every token (symmetric), or its diagonal when not full."""
        self._fold()
        if not self.full:
            return self._sum_of_squares
        return _symmetrised(self._sum_of_squares.clone())

    def mean(self) -> torch.Tensor:
        """E[x x^T] over tokens (so statistics from different sample counts compare)."""
        if not self.full:
            raise ValueError("this accumulator keeps only the diagonal of X^T X; create it with full=True")
        return self.gram.div_(max(self.tokens, 1))

    def take_mean(self) -> torch.Tensor:
        """`mean()` made in the accumulator's own storage, which it then gives up (its other statistics stay):
        one in x in float64 tensor instead of two, for inputs as wide as a 7B model's MLP (18944^2: 2.9 GB)."""
        if not self.full:
            raise ValueError("this accumulator keeps only the diagonal of X^T X; create it with full=True")
        self._fold()
        if self._sum_of_squares is None:
            raise ValueError("this accumulator has seen no input, or its second moment was already taken")
        squares, self._sum_of_squares = self._sum_of_squares, None
        self._diagonal = squares.diagonal().clone()
        return _symmetrised(squares).div_(max(self.tokens, 1))

    def square_mean(self) -> torch.Tensor:
        """E[x_j^2] per input channel."""
        self._fold()
        if self.full:
            squares = self._diagonal if self._sum_of_squares is None else self._sum_of_squares.diagonal()
        else:
            squares = self._sum_of_squares
        return squares / max(self.tokens, 1)

    def input_mean(self) -> torch.Tensor:
        """E[x_j] per input channel."""
        return self.total / max(self.tokens, 1)

    def variance(self) -> torch.Tensor:
        """Per-channel variance over tokens (population: E[x^2] - E[x]^2, clamped at 0)."""
        return (self.square_mean() - self.input_mean().pow(2)).clamp_min(0)


def _symmetrised(upper: torch.Tensor) -> torch.Tensor:
    """In place: the symmetric matrix whose upper triangle (diagonal included) is `upper`'s, its lower one ignored.

    Block row by block row, so the largest temporary is GRAM_BLOCK rows, not a second matrix; the values are
    exactly those of triu(S) + triu(S, 1).T."""
    size = upper.shape[0]
    for start in range(0, size, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, size)
        rows = upper[start:stop, :stop]  # entry (r, c) is element (start + r, c)
        # below the diagonal (c < start + r) take the mirrored upper element; the rest stays as it is
        mirrored = upper[:stop, start:stop].T.tril(start - 1)
        rows.copy_(rows.triu(start) + mirrored)
    return upper


@contextmanager
def capture_inputs(modules: dict[str, nn.Module], sink: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call `sink(name, input)` with the input of each named module on every forward."""
    def hook_for(name: str):
        def hook(_module, args) -> None:  # returns None: a value would replace the module's input
            sink(name, args[0].detach())
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def gram_of_inputs(modules: dict[str, nn.Module], full: bool = True) -> Iterator[dict[str, GramAccumulator]]:
    """Accumulate X^T X (or only its diagonal) and the sum of each named module's input while the block runs."""
    grams = {name: GramAccumulator(full) for name in modules}
    with capture_inputs(modules, lambda name, x: grams[name].add(x)):
        yield grams
