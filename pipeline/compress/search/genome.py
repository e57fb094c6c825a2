"""The genome of the evolutionary search: per-layer genes, mutation, crossover, the budget.

A genome has one gene per source layer: its query heads (KV groups follow from them, so
every mask is GQA-legal), its MLP channels, and three switches: attention on, MLP on,
layer kept. A switched-off mask stays in the gene, dormant, so switching it back on
restores it. Masks change only under the paper's overlap constraint: a child keeps at
least ceil(alpha * min(|parent|, |child|)) of the parent's units. Unlike Algorithm 1 of
Shen et al. (2024), which rejection-samples and cannot succeed when the ratio is below
alpha, the child mask is built directly: how many parent units stay is drawn inside the
allowed range, then which ones leave and which join is drawn (by importance, or uniformly).

Pure: integers, tuples and a numpy Generator; no torch modules, no I/O.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import numpy as np

from pipeline.compress.reform.sequential_reform import with_output_biases
from pipeline.compress.width.legal_widths import AttentionShape
from pipeline.models.spec import (
    ArchSpec,
    BaseDims,
    LayerSpec,
    attention_parameters,
    dense_decoder_parameters,
    mlp_parameters,
)


@dataclass(frozen=True)
class LayerGene:
    q_heads: tuple[int, ...]  # sorted source query heads (grouped by KV group, as the spec wants)
    mlp_channels: tuple[int, ...]  # sorted source MLP channels
    attention: bool = True  # False: attention skipped (its mask waits, dormant)
    mlp: bool = True  # False: MLP skipped
    kept: bool = True  # False: the whole layer removed (depth)

    @property
    def has_attention(self) -> bool:
        return self.kept and self.attention

    @property
    def has_mlp(self) -> bool:
        return self.kept and self.mlp

    @property
    def active(self) -> bool:
        return self.has_attention or self.has_mlp


Genome = tuple[LayerGene, ...]


@dataclass(frozen=True)
class UnitScores:
    """Importance of one layer's units (higher = more important), as numpy arrays."""

    q_heads: np.ndarray
    kv_groups: np.ndarray
    mlp_channels: np.ndarray


@dataclass(frozen=True)
class SearchSpace:
    base: BaseDims
    scores: tuple[UnitScores, ...] | None  # None: masks change uniformly at random (the paper)
    mlp_multiple: int = 64
    alpha: float = 0.8
    mlp_step: int = 4  # a width mutation moves at most this many multiples
    attention_skip: bool = True
    mlp_skip: bool = True
    layer_removal: bool = True

    def widths(self) -> tuple[int, ...]:
        """The MLP widths a kept MLP may have: multiples up to the source width, and the source width."""
        full = self.base.intermediate_size
        return tuple(sorted({*range(self.mlp_multiple, full + 1, self.mlp_multiple), full}))


@dataclass(frozen=True)
class Rates:
    mask: float  # per mask: swap units (always re-drawn when its size changed)
    ratio: float  # per sublayer: change its width (or skip it)
    depth: float  # per candidate: remove a layer or restore one


# ---- shapes and parameters ---------------------------------------------------------------
def kv_groups(q_heads: Sequence[int], base: BaseDims) -> tuple[int, ...]:
    return tuple(sorted({h // base.group_size for h in q_heads}))


def attention_shape(gene: LayerGene, base: BaseDims) -> AttentionShape | None:
    if not gene.has_attention:
        return None
    groups = len(kv_groups(gene.q_heads, base))
    return AttentionShape(groups, len(gene.q_heads) // groups)


def layer_shapes(genome: Genome, base: BaseDims) -> list[tuple[AttentionShape | None, int]]:
    """(attention shape or None, MLP width or 0) of every layer still in the model."""
    return [(attention_shape(g, base), len(g.mlp_channels) if g.has_mlp else 0) for g in genome if g.active]


def genome_parameters(genome: Genome, base: BaseDims, out_bias: bool = False) -> int:
    """Decoder parameters kept; with `out_bias`, counting the bias of every output projection that lost inputs
    (where bias compensation goes)."""
    total = 0
    for shape, width in layer_shapes(genome, base):
        if shape is not None:
            total += attention_parameters(base, shape.num_heads, shape.num_kv_heads,
                                          out_bias and shape.num_heads < base.num_heads)
        if width:
            total += mlp_parameters(base, width, out_bias and width < base.intermediate_size)
    return total


def genome_ratio(genome: Genome, base: BaseDims, out_bias: bool = False) -> float:
    return genome_parameters(genome, base, out_bias) / dense_decoder_parameters(base)


# ---- identity and conversion ------------------------------------------------------------
def _layer_text(gene: LayerGene) -> str:
    if not gene.active:
        return "-"
    attention = ",".join(map(str, gene.q_heads)) if gene.has_attention else "skip"
    mlp = _bits(gene.mlp_channels) if gene.has_mlp else "skip"
    return f"{attention}|{mlp}"


def genome_key(genome: Genome) -> str:
    """Equal for genomes that describe the same model (dormant masks do not count)."""
    text = ";".join(_layer_text(gene) for gene in genome)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def genome_spec(genome: Genome, base: BaseDims, notes: dict | None = None, out_bias: bool = False) -> ArchSpec:
    """The architecture `genome` keeps; with `out_bias`, an output bias on every projection that lost inputs."""
    layers = []
    for source, gene in enumerate(genome):
        if not gene.active:
            continue
        fields: dict = {"source": source}
        if gene.has_attention:
            groups = kv_groups(gene.q_heads, base)
            fields.update(num_heads=len(gene.q_heads), num_kv_heads=len(groups), q_heads=gene.q_heads, kv_heads=groups)
        else:
            fields["attention"] = "skip"
        if gene.has_mlp:
            fields.update(intermediate_size=len(gene.mlp_channels), mlp_channels=gene.mlp_channels)
        else:
            fields["mlp"] = "skip"
        layers.append(LayerSpec(**fields))
    spec = ArchSpec(base, tuple(layers), notes=dict(notes or {})).validate()
    return with_output_biases(spec) if out_bias else spec


def genome_from_spec(spec: ArchSpec) -> Genome:
    """The genome of a spec that keeps every layer with both sublayers (e.g. the uniform init)."""
    by_source = {layer.source: layer for layer in spec.layers}
    genes = []
    for source in range(spec.base.num_layers):
        layer = by_source.get(source)
        if layer is None or layer.attention != "keep" or layer.mlp != "keep" or not spec.has_indices:
            raise ValueError(f"layer {source}: a seed genome needs every layer with both sublayers and keep-indices")
        genes.append(LayerGene(tuple(sorted(layer.q_heads)), tuple(sorted(layer.mlp_channels))))
    return tuple(genes)


def genome_to_dict(genome: Genome) -> list[dict]:
    return [{"q": list(g.q_heads), "mlp": _bits(g.mlp_channels), "attention": g.attention, "mlp_on": g.mlp,
             "kept": g.kept} for g in genome]


def genome_from_dict(data: list[dict]) -> Genome:
    return tuple(LayerGene(tuple(d["q"]), _unbits(d["mlp"]), d["attention"], d["mlp_on"], d["kept"]) for d in data)


def _bits(units: Sequence[int]) -> str:
    return format(sum(1 << u for u in units), "x")


def _unbits(text: str) -> tuple[int, ...]:
    return tuple(i for i, bit in enumerate(reversed(bin(int(text, 16))[2:])) if bit == "1")


# ---- choosing units ----------------------------------------------------------------------
def pick(rng: np.random.Generator, pool: Sequence[int], count: int, scores: np.ndarray | None,
         prefer: Literal["high", "low"]) -> list[int]:
    """`count` distinct units of `pool`, drawn without replacement: uniformly, or with probability
    proportional to score ("high", units joining) or to 1/score ("low", units leaving)."""
    pool = list(pool)
    if count >= len(pool):
        return pool
    if count <= 0:
        return []
    keys = rng.gumbel(size=len(pool))  # Gumbel top-k = Plackett-Luce sampling by the weights
    if scores is not None:
        logs = np.log(np.maximum(np.asarray(scores, dtype=np.float64)[pool], 1e-300))
        keys = keys + (logs if prefer == "high" else -logs)
    return [pool[i] for i in np.argsort(-keys, kind="stable")[:count]]


def overlap_floor(parent: int, child: int, alpha: float) -> int:
    """Fewest parent units a child must keep: ceil(alpha * min(|parent|, |child|))."""
    return math.ceil(alpha * min(parent, child) - 1e-9)


def mutate_units(rng: np.random.Generator, parent: Sequence[int], count: int, pool_size: int,
                 scores: np.ndarray | None, alpha: float, swap: bool) -> tuple[int, ...]:
    """A child mask of `count` units: as many parent units as possible, or (swap) a random number
    between the overlap floor and one fewer, the others drawn from outside the parent."""
    parent = list(parent)
    outside = sorted(set(range(pool_size)) - set(parent))
    most = min(len(parent), count)
    least = max(overlap_floor(len(parent), count, alpha), count - len(outside))
    keep = int(rng.integers(least, most)) if swap and least < most else most
    stay = set(parent) - set(pick(rng, parent, len(parent) - keep, scores, "low"))
    return tuple(sorted(stay | set(pick(rng, outside, count - keep, scores, "high"))))


def mutate_heads(rng: np.random.Generator, parent: Sequence[int], shape: AttentionShape, base: BaseDims,
                 scores: UnitScores | None, alpha: float, swap: bool) -> tuple[int, ...]:
    """A GQA-legal child set of query heads of `shape`, under the same overlap rule as `mutate_units`:
    parent KV groups are kept or swapped whole, then heads inside each group."""
    size, parent = base.group_size, sorted(parent)
    groups = sorted({h // size for h in parent})
    per_parent = len(parent) // len(groups)
    shared = min(per_parent, shape.per_group)  # parent heads a retained group can keep
    least_in_group = max(0, shape.per_group - (size - per_parent))  # ... and must keep, to fill its heads
    most = min(len(groups), shape.num_kv_heads) * shared
    floor = min(overlap_floor(len(parent), shape.num_heads, alpha), most)
    keep = int(rng.integers(floor, most)) if swap and floor < most else most
    min_retained = shape.num_kv_heads - (base.num_kv_heads - len(groups))
    while True:  # the largest overlap `most` is always feasible, so this ends
        options = [r for r in range(max(1, min_retained), min(len(groups), shape.num_kv_heads) + 1)
                   if r * least_in_group <= keep <= r * shared]
        if options:
            break
        keep += 1
    retained_count = int(rng.choice(options))
    kv_scores, q_scores = (scores.kv_groups, scores.q_heads) if scores is not None else (None, None)
    retained = sorted(set(groups) - set(pick(rng, groups, len(groups) - retained_count, kv_scores, "low")))
    others = [g for g in range(base.num_kv_heads) if g not in groups]
    fresh = pick(rng, others, shape.num_kv_heads - retained_count, kv_scores, "high")
    kept_per_group = {g: shared for g in retained}
    for _ in range(retained_count * shared - keep):  # lower the overlap one unit at a time
        g = int(rng.choice([g for g in retained if kept_per_group[g] > least_in_group]))
        kept_per_group[g] -= 1
    heads: set[int] = set()
    for g in retained:
        own = [h for h in parent if h // size == g]
        stay = set(own) - set(pick(rng, own, len(own) - kept_per_group[g], q_scores, "low"))
        spare = [h for h in range(g * size, (g + 1) * size) if h not in own]
        heads |= stay | set(pick(rng, spare, shape.per_group - kept_per_group[g], q_scores, "high"))
    for g in fresh:
        heads |= set(pick(rng, range(g * size, (g + 1) * size), shape.per_group, q_scores, "high"))
    return tuple(sorted(heads))


# ---- operators ---------------------------------------------------------------------------
def mutate(genome: Genome, space: SearchSpace, rates: Rates, rng: np.random.Generator) -> Genome:
    """Depth (per candidate), then per kept layer: sublayer sizes, skips and masks."""
    layers = list(genome)
    if space.layer_removal and rng.random() < rates.depth:
        layers = _mutate_depth(layers, rng)
    for i, gene in enumerate(layers):
        if gene.kept:
            layers[i] = _mutate_layer(gene, i, space, rates, rng)
    return tuple(layers)


def _mutate_depth(layers: list[LayerGene], rng: np.random.Generator) -> list[LayerGene]:
    moves = [i for i, g in enumerate(layers) if not g.kept or g.active]
    i = int(rng.choice(moves))
    layers[i] = replace(layers[i], kept=not layers[i].kept)
    return layers


def _mutate_layer(gene: LayerGene, i: int, space: SearchSpace, rates: Rates, rng: np.random.Generator) -> LayerGene:
    base, scores = space.base, space.scores[i] if space.scores is not None else None
    # attention: a neighbouring shape (one KV group or one head per group more or fewer), or skip / unskip
    on, shape = gene.attention, attention_shape(replace(gene, attention=True, kept=True), base)
    if rng.random() < rates.ratio:
        moves = [s for s in _neighbour_shapes(shape, base)] if on else []
        if space.attention_skip or not on:
            moves.append(None)  # None toggles the skip
        move = moves[int(rng.integers(len(moves)))] if moves else shape
        on, shape = (not on, shape) if move is None else (on, move)
    swap = rng.random() < rates.mask
    q_heads = gene.q_heads
    if on and (shape.num_heads != len(q_heads) or len(kv_groups(q_heads, base)) != shape.num_kv_heads or swap):
        q_heads = mutate_heads(rng, q_heads, shape, base, scores, space.alpha, swap)
    # MLP: up to mlp_step multiples wider or narrower, or skip / unskip
    mlp_on, width = gene.mlp, len(gene.mlp_channels)
    if rng.random() < rates.ratio:
        widths = space.widths()
        at = widths.index(width) if width in widths else int(np.searchsorted(widths, width))
        moves = [w for w in widths[max(0, at - space.mlp_step): at + space.mlp_step + 1] if w != width] if mlp_on else []
        if space.mlp_skip or not mlp_on:
            moves.append(0)  # 0 toggles the skip
        move = moves[int(rng.integers(len(moves)))] if moves else width
        mlp_on, width = (not mlp_on, width) if move == 0 else (mlp_on, move)
    swap = rng.random() < rates.mask
    channels = gene.mlp_channels
    if mlp_on and (width != len(channels) or swap):
        channels = mutate_units(rng, channels, width, base.intermediate_size,
                                scores.mlp_channels if scores is not None else None, space.alpha, swap)
    return LayerGene(q_heads, channels, on, mlp_on, gene.kept)


def _neighbour_shapes(shape: AttentionShape, base: BaseDims) -> list[AttentionShape]:
    steps = ((1, 0), (-1, 0), (0, 1), (0, -1))
    return [AttentionShape(shape.num_kv_heads + dg, shape.per_group + dp) for dg, dp in steps
            if 1 <= shape.num_kv_heads + dg <= base.num_kv_heads and 1 <= shape.per_group + dp <= base.group_size]


def crossover(a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
    """Each layer's whole gene from one parent or the other (masks stay consistent with their sizes)."""
    take_a = rng.random(len(a)) < 0.5
    return tuple(x if first else y for x, y, first in zip(a, b, take_a))


# ---- the budget --------------------------------------------------------------------------
Verdict = Literal["ok", "shrink", "grow", "stuck"]


@dataclass(frozen=True)
class Budget:
    """Legal candidates: decoder-parameter ratio in [min_ratio, max_ratio] and, with a latency
    budget, predicted decode speed-up in [min_speedup, max_speedup]."""

    base: BaseDims
    max_ratio: float
    min_ratio: float
    speedup: Callable[[Genome], float] | None = None
    min_speedup: float = 0.0
    max_speedup: float = math.inf
    out_bias: bool = False  # candidates carry bias compensation, whose biases count (genome_parameters)

    def verdict(self, genome: Genome) -> Verdict:
        if not any(g.has_attention for g in genome):
            return "stuck"
        ratio = genome_ratio(genome, self.base, self.out_bias)
        speedup = self.speedup(genome) if self.speedup is not None else None
        big = ratio > self.max_ratio + 1e-12 or (speedup is not None and speedup < self.min_speedup)
        small = ratio < self.min_ratio - 1e-12 or (speedup is not None and speedup > self.max_speedup)
        return "stuck" if big and small else "shrink" if big else "grow" if small else "ok"


def repair(genome: Genome, space: SearchSpace, budget: Budget, rng: np.random.Generator,
           max_steps: int = 2000) -> Genome | None:
    """Walk random MLP widths one multiple at a time until the candidate fits the budget; None if it cannot."""
    layers, widths = list(genome), space.widths()
    for _ in range(max_steps):
        verdict = budget.verdict(tuple(layers))
        if verdict in ("ok", "stuck"):
            return tuple(layers) if verdict == "ok" else None
        step = -1 if verdict == "shrink" else 1
        movable = [i for i, g in enumerate(layers) if g.has_mlp and len(g.mlp_channels) in widths
                   and 0 <= widths.index(len(g.mlp_channels)) + step < len(widths)]
        if not movable:
            return None
        i = int(rng.choice(movable))
        gene = layers[i]
        width = widths[widths.index(len(gene.mlp_channels)) + step]
        scores = space.scores[i].mlp_channels if space.scores is not None else None
        channels = mutate_units(rng, gene.mlp_channels, width, space.base.intermediate_size, scores, space.alpha, False)
        layers[i] = replace(gene, mlp_channels=channels)
    return None
