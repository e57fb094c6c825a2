"""Evolutionary architecture search from the importance initialisation ("Search for Efficient LLMs",
Shen et al. 2024, §3.3), with GQA-legal head masks, skippable sublayers, removable layers, and a
parameter and/or measured decode-latency budget.

Generation 0 is every uniform importance-initialised architecture that fits the budget (one per
attention shape, the paper's initial subnet and its split alternatives), filled up with strongly
mutated copies of the best one. Each later generation is `mutations` mutants and `crossovers`
children of random parents among the best `parents` so far, plus strongly mutated ones; the
best `parents` of everything scored become the next parents. A candidate outside the budget is
walked back into it by one-multiple MLP width steps (or dropped), one already scored is dropped.
Fitness is perplexity on fixed calibration windows. See docs/search.md for the defaults vs the paper's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from pipeline.compress.registry import MethodOptions
from pipeline.compress.width.legal_widths import DEFAULT_MLP_MULTIPLE
from pipeline.errors import SculptError
from pipeline.models.spec import BaseDims

from .candidate_scorer import CandidateScore
from .genome import (
    Budget,
    Genome,
    Rates,
    SearchSpace,
    UnitScores,
    crossover,
    genome_from_dict,
    genome_key,
    genome_ratio,
    genome_to_dict,
    mutate,
    repair,
)


class EvolutionOptions(MethodOptions):
    population: int = Field(24, ge=2)  # candidates per generation (paper: 100)
    mutations: int = Field(12, ge=0)  # mutants of the parents per generation (paper: 50)
    crossovers: int = Field(8, ge=0)  # crossover children per generation (paper: 30); the rest: strong mutants
    parents: int = Field(6, ge=1)  # top-k kept as parents (paper: 10)
    generations: int = Field(16, ge=0)  # after the initial population (paper: 50)
    mask_rate_initial: float = Field(0.3, ge=0, le=1)  # P_m for generation 0 and strong mutants (paper: 0.6)
    mask_rate: float = Field(0.1, ge=0, le=1)  # P_m per mask for mutants (paper: 0.3)
    ratio_rate_initial: float = Field(0.15, ge=0, le=1)  # P_s for generation 0 and strong mutants (paper: 0.3)
    ratio_rate: float = Field(0.05, ge=0, le=1)  # P_s per sublayer for mutants (paper: 0.1)
    depth_rate: float = Field(0.1, ge=0, le=1)  # P_d per candidate: remove or restore one layer (paper: 0.1)
    alpha: float = Field(0.8, gt=0, le=1)  # a child mask keeps >= alpha of its parent's units (paper: 0.8)
    mask_sampling: Literal["importance", "uniform"] = "importance"  # which units leave / join a mask
    mlp_multiple: int = Field(DEFAULT_MLP_MULTIPLE, ge=1)  # MLP widths snap to this many channels
    mlp_step: int = Field(4, ge=1)  # a width mutation moves at most this many multiples
    attention_skip: bool = True  # a layer may skip its attention
    mlp_skip: bool = True  # a layer may skip its MLP
    layer_removal: bool = True  # depth mutation may remove whole layers
    tolerance: float = Field(0.01, ge=0, lt=1)  # legal decoder ratio: [ratio - tolerance, ratio]
    fitness_windows: int = Field(4, ge=1)  # calibration windows scoring each candidate (paper: 5)
    fitness_seqlen: int = Field(256, ge=0)  # their length in tokens, cut from the calibration windows (0: all)
    # also seed the search with, per uniform seed, the same attention and total MLP width spread over the layers by
    # what the reform cannot recover (mlp_width_costs.py); costs a forward and backward pass per calibration window
    allocated_seeds: bool = False
    # which MLP channels a width keeps: "importance" = the paper's per-channel scores; "greedy" = greedy removal with
    # the least-squares correction of the kept channels, weighted by the loss gradient (greedy_channels.py), the
    # set the reform corrects best; costs the same gradient pass as allocated_seeds and ~1.7 s per layer
    mlp_selection: Literal["importance", "greedy"] = "importance"
    # also seed the search with the model FLAP's global allocation keeps (its KV groups and MLP channels per layer,
    # seeds.py), scored from the importance pass's own statistics: no extra pass
    flap_seed: bool = False
    # score every candidate with FLAP's bias compensation on each output projection that lost inputs (the removed
    # inputs' dense mean contribution; compensation.py), and ship those biases, which the reform refits; the
    # biases count in the parameter budget. Means from the importance pass: no extra pass. At 0.8 it shipped no
    # better a model on the test text (docs/search.md)
    compensate: bool = False
    cache_mb: int = Field(512, ge=0)  # memory for hidden states of shared leading layers
    latency_speedup: float | None = Field(None, gt=1)  # also require this predicted decode speed-up vs dense
    latency_tolerance: float = Field(0.05, ge=0)  # legal speed-up: [target, target * (1 + tolerance)]
    latency_context: int = Field(512, ge=1)  # KV-cache length the latency table is measured at
    time_limit_min: float | None = Field(None, gt=0)  # stop after the generation that passes it (not reproducible)
    # also run the search with the skip genes off (same seed, its own checkpoint and log): with a reform step, the
    # widths-only search wins at deep cuts and the skipping one at shallow cuts (docs/search.md)
    skip_free_track: bool = False
    # what the search returns: "fitness" = the lowest calibration score of any track; "reformed" = among each
    # track's best `final_candidates` and as many best seeds of each kind (uniform, allocated, flap), the lowest perplexity on
    # the last `final_windows` calibration windows after the reform stage's default ADMM (sequential) on the others
    final_choice: Literal["fitness", "reformed"] = "fitness"
    # "reformed": finalists within this fraction of the best reformed score are tied, and the tie goes to the lowest
    # fitness (the least reform-dependent structure, which holds up better on other text; final_choice.py)
    final_tolerance: float = Field(0.02, ge=0)
    final_candidates: int = Field(3, ge=1)
    final_windows: int = Field(8, ge=1)
    # > 0: the finalists are reformed on every calibration window (as the reform stage will) and scored on
    # `final_windows` windows of this many tokens drawn from the calibration split with another seed. Scored at
    # the evaluation length (2048) the finalists rank as on the test text; 8 short held-out windows did not
    # (docs/search.md). 0: the last `final_windows` calibration windows, held out of the fit.
    final_seqlen: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> "EvolutionOptions":
        if self.mutations + self.crossovers > self.population:
            raise ValueError(f"mutations + crossovers ({self.mutations + self.crossovers}) exceed the population "
                             f"({self.population}); lower them or raise population")
        if self.parents > self.population:
            raise ValueError(f"parents ({self.parents}) exceed the population ({self.population})")
        if self.skip_free_track and not (self.attention_skip or self.mlp_skip or self.layer_removal):
            raise ValueError("skip_free_track adds a search with the skip genes off, and they are all off already; "
                             "drop skip_free_track or turn a skip gene on")
        if self.final_choice == "reformed" and self.final_candidates > self.parents:
            raise ValueError(f"final_candidates ({self.final_candidates}) exceed the parents ({self.parents}) "
                             "the search keeps; lower it or raise parents")
        return self

    def skip_free(self) -> "EvolutionOptions":
        """These options with every skip gene off (the skip-free track)."""
        return self.model_copy(update={"attention_skip": False, "mlp_skip": False, "layer_removal": False})


@dataclass(frozen=True)
class Candidate:
    genome: Genome
    ppl: float
    key: str


# A generation in progress: it yields each batch of genomes it needs scored, is sent their fitness (lower is
# better, in the batch's order) and returns its log row. The caller decides where and how the batch is scored
# (`run_generations`), so several searches can have their batches scored together.
Generation = Generator[list[Genome], list[float], dict]


class EvolutionSearch:
    """The search state and its generations (see `Generation`)."""

    def __init__(self, space: SearchSpace, budget: Budget, options: EvolutionOptions, seed: int) -> None:
        self.space, self.budget, self.options = space, budget, options
        self.rng = np.random.default_rng(seed)
        self.seen: dict[str, float] = {}
        self.parents: list[Candidate] = []
        self.seeds: list[Candidate] = []  # the seeds, best first, as generation 0 scored them
        self.seed_kinds: dict[str, str] = {}  # each seed's key -> where it came from ("uniform", "allocated", "flap")
        self.history: list[dict] = []
        self.generation = -1  # the last completed generation
        self.strong = Rates(options.mask_rate_initial, options.ratio_rate_initial, options.depth_rate)
        self.mild = Rates(options.mask_rate, options.ratio_rate, options.depth_rate)

    @property
    def best(self) -> Candidate:
        return self.parents[0]

    # ---- generations -------------------------------------------------------------------
    def initial(self, seeds: list[tuple[str, Genome]]) -> Generation:
        """Generation 0: the seeds (each with where it came from), then strong mutants of the best seed up to the
        population size."""
        legal = {}
        for kind, seed in seeds:
            genome = repair(seed, self.space, self.budget, self.rng)
            if genome is not None:
                legal.setdefault(genome_key(genome), (kind, genome))
        if not legal:
            raise SculptError("no uniform architecture fits the budget: raise the ratio or the tolerance, "
                              "or lower the latency speed-up")
        began = time.perf_counter()
        scored = yield from self._score_all([("seed", g) for g in self._unique([g for _, g in legal.values()])])
        self.seeds = sorted((candidate for _, candidate in scored), key=lambda c: (c.ppl, c.key))
        self.seed_kinds = {key: kind for key, (kind, _) in legal.items()}
        seed_best = self.seeds[0]
        wanted = self.options.population - len(scored)
        scored += yield from self._score_all(self._offspring([seed_best], [("strong", wanted)]))
        return self._close_generation(scored, began, seed_ppl=seed_best.ppl)

    def step(self) -> Generation:
        """One generation of mutants, crossovers and strong mutants of the current parents."""
        opts = self.options
        began = time.perf_counter()
        plan = [("mutation", opts.mutations), ("crossover", opts.crossovers),
                ("strong", opts.population - opts.mutations - opts.crossovers)]
        scored = yield from self._score_all(self._offspring(self.parents, plan))
        return self._close_generation(scored, began)

    def _offspring(self, parents: list[Candidate], plan: list[tuple[str, int]]) -> list[tuple[str, Genome]]:
        children: list[tuple[str, Genome]] = []
        keys: set[str] = set()
        for kind, count in plan:
            made = 0
            for _ in range(10 * count):  # as the paper's code: give up after 10x the wanted attempts
                if made == count:
                    break
                child = repair(self._child(kind, parents), self.space, self.budget, self.rng)
                if child is None:
                    continue
                key = genome_key(child)
                if key in self.seen or key in keys:
                    continue
                keys.add(key)
                children.append((kind, child))
                made += 1
        return children

    def _child(self, kind: str, parents: list[Candidate]) -> Genome:
        first = parents[int(self.rng.integers(len(parents)))].genome
        if kind == "crossover" and len(parents) > 1:
            i, j = self.rng.choice(len(parents), size=2, replace=False)
            return crossover(parents[int(i)].genome, parents[int(j)].genome, self.rng)
        return mutate(first, self.space, self.strong if kind == "strong" else self.mild, self.rng)

    def _unique(self, genomes: list[Genome]) -> list[Genome]:
        out, keys = [], set()
        for genome in genomes:
            key = genome_key(genome)
            if key not in keys and key not in self.seen:
                keys.add(key)
                out.append(genome)
        return out

    def _score_all(self, batch: list[tuple[str, Genome]]) -> Generator[list[Genome], list[float],
                                                                       list[tuple[str, Candidate]]]:
        if not batch:
            return []
        ppls = yield [genome for _, genome in batch]
        scored = []
        for (kind, genome), ppl in zip(batch, ppls, strict=True):
            key = genome_key(genome)
            self.seen[key] = float(ppl)
            scored.append((kind, Candidate(genome, float(ppl), key)))
        return scored

    def _close_generation(self, scored: list[tuple[str, Candidate]], began: float, **extra) -> dict:
        self.generation += 1
        pool = self.parents + [c for _, c in scored]
        self.parents = sorted(pool, key=lambda c: (c.ppl, c.key))[: self.options.parents]
        winners = {c.key for c in self.parents}
        kinds: dict[str, dict[str, int]] = {}
        for kind, cand in scored:
            tally = kinds.setdefault(kind, {"scored": 0, "to_parents": 0})
            tally["scored"] += 1
            tally["to_parents"] += cand.key in winners
        row = {"generation": self.generation, "scored": len(scored), "best_ppl": self.best.ppl,
               "best_ratio": round(genome_ratio(self.best.genome, self.space.base, self.budget.out_bias), 6),
               "parents_ppl": [c.ppl for c in self.parents], "ppl": [c.ppl for _, c in scored], "kinds": kinds,
               "seconds": round(time.perf_counter() - began, 3), **extra}
        if self.budget.speedup is not None:
            row["best_speedup"] = round(self.budget.speedup(self.best.genome), 4)
        self.history.append(row)
        return row

    # ---- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generation": self.generation, "rng": self.rng.bit_generator.state, "seen": self.seen,
                "parents": [_candidate_dict(c) for c in self.parents],
                "seeds": [{**_candidate_dict(c), "kind": self.seed_kinds[c.key]} for c in self.seeds],
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.generation = state["generation"]
        self.rng.bit_generator.state = state["rng"]
        self.seen = dict(state["seen"])
        self.parents = [_candidate(p) for p in state["parents"]]
        self.seeds = [_candidate(c) for c in state.get("seeds", [])]
        self.seed_kinds = {c.key: data.get("kind", "uniform") for c, data in zip(self.seeds, state.get("seeds", []))}
        self.history = list(state["history"])


def _candidate_dict(candidate: Candidate) -> dict:
    return {"genome": genome_to_dict(candidate.genome), "ppl": candidate.ppl}


def _candidate(data: dict) -> Candidate:
    genome = genome_from_dict(data["genome"])
    return Candidate(genome, data["ppl"], genome_key(genome))


def search_space(base: BaseDims, importance, options: EvolutionOptions) -> SearchSpace:
    scores = None
    if options.mask_sampling == "importance":
        scores = tuple(UnitScores(imp.q_heads.numpy(), imp.kv_groups.numpy(), imp.mlp_channels.numpy())
                       for imp in importance)
    return SearchSpace(base, scores, options.mlp_multiple, options.alpha, options.mlp_step, options.attention_skip,
                       options.mlp_skip, options.layer_removal)


def fingerprint(*parts) -> str:
    """A stable hash of JSON-able parts (what a checkpoint must match to be resumed)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class Track:
    """One search that `run_generations` runs: its state, its seeds, and where it checkpoints."""

    name: str
    search: EvolutionSearch
    seeds: list[tuple[str, Genome]]
    checkpoint: Callable[[dict], None]  # gets `search.state_dict()` after each generation
    stopped: bool = False  # cut short by the time limit

    def remaining(self) -> int:
        return 0 if self.stopped else max(self.search.options.generations - self.search.generation, 0)


# Scores a batch of genomes (calling its second argument once per finished one); results in the batch's order.
BatchScorer = Callable[[list[Genome], Callable[[], None]], list[CandidateScore]]


def run_generations(tracks: list[Track], score: BatchScorer, progress: bool = True, desc: str = "evolution") -> None:
    """Run every track's remaining generations in lockstep, each track checkpointing after each of its generations.

    A round starts the next generation of every track that has one left; the batches they ask for are scored
    together, in one call of `score` (an executor with many workers gets them all at once), and each track gets
    its own scores back in its own order, so a track's result does not depend on the others. A track stops early
    after the first generation that ends past its time limit (`time_limit_min`, counted from this call)."""
    began = time.perf_counter()
    total = sum(t.search.options.population * (t.search.options.generations + 1) for t in tracks)
    done = sum(t.search.options.population * (t.search.generation + 1) for t in tracks)
    bar = tqdm(total=total, initial=min(total, done), desc=desc, unit="cand", disable=not progress)
    with bar:
        while active := [t for t in tracks if t.remaining()]:
            rows = _run_round(active, score, bar.update)
            for track in active:
                track.checkpoint(track.search.state_dict())
                limit = (track.search.options.time_limit_min or float("inf")) * 60
                track.stopped = track.remaining() > 0 and time.perf_counter() - began > limit
            # generation 0 scores every legal seed, which may outnumber the population
            bar.total = bar.n + sum(t.search.options.population * t.remaining() for t in tracks)
            best = min(rows.values(), key=lambda row: row["best_ppl"])
            bar.set_postfix(gen=best["generation"], best_ppl=f"{best['best_ppl']:.3f}")


def _run_round(tracks: list[Track], score: BatchScorer, on_done: Callable[[], None]) -> dict[str, dict]:
    """One generation of each track, their batches scored together; each track's log row (in its history), with
    what its own candidates cost added."""
    running: dict[str, Generation] = {t.name: t.search.initial(t.seeds) if t.search.generation < 0 else t.search.step()
                                      for t in tracks}
    costs: dict[str, list[CandidateScore]] = {t.name: [] for t in tracks}
    asks: dict[str, list[Genome]] = {}
    rows: dict[str, dict] = {}

    def advance(name: str, reply: list[float] | None) -> None:
        try:
            asks[name] = running[name].send(reply)
        except StopIteration as finished:
            rows[name] = finished.value

    for name in running:
        advance(name, None)
    while asks:
        names, batches = list(asks), list(asks.values())
        asks.clear()
        scores = score([genome for batch in batches for genome in batch], on_done)
        start = 0
        for name, batch in zip(names, batches):
            mine = scores[start:start + len(batch)]
            start += len(batch)
            costs[name] += mine
            advance(name, [s.ppl for s in mine])
    for name, row in rows.items():
        row.update(_cost_stats(costs[name]))
    return rows


def _cost_stats(scores: list[CandidateScore]) -> dict:
    run, reused = sum(s.layers_run for s in scores), sum(s.layers_reused for s in scores)
    return {"seconds_per_candidate": round(sum(s.seconds for s in scores) / max(len(scores), 1), 4),
            "prefix_reuse": round(reused / max(run + reused, 1), 4)}
