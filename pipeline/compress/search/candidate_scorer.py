"""Calibration perplexity of many candidate architectures cut from one dense model, fast.

What makes a candidate cheap to score (measured in docs/search.md):
- its layers are sliced (smaller GEMMs), one at a time, straight from the source weights:
  no full-model copy, no masked dense compute;
- the hidden state after every layer is kept in an LRU cache keyed by the layers up to there,
  so a child sharing its first k layers with a scored candidate starts at layer k;
- all fitness windows go through a layer as one batch; the loss is float32 cross-entropy.
The result equals `calibration_perplexity(slice_model(source, spec), windows)` up to float rounding; with
input `means`, the output biases a spec carries hold their compensation (compensation.py), as the search ships
them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.compress.calibration.layer_stream import LayerStream
from pipeline.compress.calibration.tensor_cache import TensorLRU
from pipeline.models.adapters import adapter_for
from pipeline.models.slicing import sculpted_config, slice_layer
from pipeline.models.spec import ArchSpec

from .compensation import InputMeans, compensate_layer


def prefix_keys(spec: ArchSpec) -> list[str]:
    """keys[i] names source layers 0..i of `spec`: equal keys, equal hidden state after source layer i."""
    by_source = {layer.source: layer for layer in spec.layers}
    digest, keys = hashlib.blake2b(digest_size=16), []
    for source in range(spec.base.num_layers):
        layer = by_source.get(source)
        digest.update((json.dumps(layer.to_dict(), sort_keys=True) if layer else "-").encode() + b";")
        keys.append(digest.copy().hexdigest())
    return keys


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's fitness and what scoring it cost (summed into each generation's log row)."""

    ppl: float
    seconds: float  # spent scoring it, where it was scored (a worker's time, not the search's wall time)
    layers_run: int
    layers_reused: int  # source layers skipped thanks to the prefix cache


@dataclass
class ScorerStats:
    candidates: int = 0
    layers_run: int = 0
    layers_reused: int = 0  # source layers skipped thanks to the prefix cache
    seconds: float = 0.0

    def as_dict(self) -> dict:
        total = self.layers_run + self.layers_reused
        return {"candidates": self.candidates, "seconds_per_candidate": self.seconds / max(self.candidates, 1),
                "prefix_reuse": self.layers_reused / total if total else 0.0}


class CandidateScorer:
    """Scores ArchSpecs cut from `model` by perplexity on fixed calibration `windows` [n, L]."""

    def __init__(self, model, windows: torch.Tensor, cache_bytes: int = 512 * 2**20,
                 means: InputMeans | None = None) -> None:
        self.model, self.adapter = model, adapter_for(model.config)
        self.windows, self.means = windows, means
        self.stream = LayerStream(model, self.adapter, windows, batch_size=windows.shape[0])
        self.cache = TensorLRU(cache_bytes)  # hidden states by prefix key
        self.stats = ScorerStats()

    def perplexity(self, spec: ArchSpec) -> float:
        return self.score(spec).ppl

    @torch.no_grad()
    def score(self, spec: ArchSpec) -> CandidateScore:
        began = time.perf_counter()
        keys = prefix_keys(spec)
        start, hidden = 0, self.stream.hidden[0]
        for source in range(len(keys) - 1, -1, -1):  # the longest cached prefix
            cached = self.cache.get(keys[source])
            if cached is not None:
                start, hidden = source + 1, cached
                break
        config = sculpted_config(self.model.config, spec)
        position = {layer.source: pos for pos, layer in enumerate(spec.layers)}
        for source in range(start, len(keys)):
            if source in position:
                layer = slice_layer(self.model, spec, position[source], config)
                if self.means is not None:
                    compensate_layer(self.adapter, layer, self.model, spec, position[source], self.means)
                hidden = self.stream.run(layer, [hidden])[0]
            self.cache.put(keys[source], hidden)
        self.stats.candidates += 1
        self.stats.layers_run += len(keys) - start
        self.stats.layers_reused += start
        ppl = self._perplexity_from(hidden)
        seconds = time.perf_counter() - began
        self.stats.seconds += seconds
        return CandidateScore(ppl, seconds, len(keys) - start, start)

    def _perplexity_from(self, hidden: torch.Tensor) -> float:
        norm, head = self.adapter.final_norm(self.model), self.adapter.lm_head(self.model)
        total, count = 0.0, 0
        for states, ids in zip(hidden, self.windows):  # one window at a time bounds the logits' memory
            logits = head(norm(states[:-1])).float()
            total += F.cross_entropy(logits, ids[1:].to(logits.device), reduction="sum").item()
            count += ids.numel() - 1
        return math.exp(total / count)
