"""The `evolution` method: wires the search to a model, its calibration data and the artifact.

Importance (once, kept in the resume directory); with `mlp_selection: greedy`, the MLP channels
ranked by greedy reform-aware removal, and with `allocated_seeds`, every layer's removal cost of each
MLP width (same pass, plus a gradient pass); the uniform (and allocated) seeds, the
budget (with a latency table when a speed-up is asked for), the candidate scorer, one search per
track (the main one, and with `skip_free_track` one with the skip genes off), each checkpointed
after every generation; the final choice; and the outputs: `search.jsonl`, `convergence.png`
(per track), `final_choice.json`, `latency_table.json`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from pipeline.errors import SculptError
from pipeline.models.loading import cache_root
from pipeline.models.adapters import MLP_OUTPUT
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, BaseDims
from .candidate_scorer import CandidateScorer
from pipeline.compress.importance.greedy_channels import greedy_channel_scores
from .generations import Candidate, EvolutionOptions, EvolutionSearch, fingerprint, run_generations, search_space
from .genome import Budget, Genome, SearchSpace, genome_from_spec, genome_ratio, genome_spec, layer_shapes
from .records import (WidthCosts, load_checkpoint, load_importance, plot_convergence, save_checkpoint,
                                save_importance, track_file, write_log)
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.importance.obs_importance import LayerImportance, layer_importance
from .latency_table import LatencyTable, machine_key, measure_latency_table
from pipeline.compress.reform.sequential_reform import ReformSettings, reform_sculpted
from pipeline.compress.calibration.layer_stream import GramAccumulator
from pipeline.compress.importance.mlp_width_costs import allocate_widths, output_gradient_covariance, removal_costs
from pipeline.compress.registry import MethodContext, MethodResult, register
from pipeline.compress.width.legal_widths import attention_shapes, top_units
from pipeline.compress.width.uniform import uniform_spec


@register("evolution", "evolutionary search from the importance init (Shen et al. 2024): per-layer heads, MLP "
          "widths, skipped sublayers and depth, in a parameter and optional measured-latency budget", EvolutionOptions)
def run_evolution(ctx: MethodContext, ratio: float, options: EvolutionOptions) -> MethodResult:
    windows = fitness_windows(ctx.calibration, options)
    final = final_windows(ctx.calibration, options)
    calibration_hash = hashlib.sha256(ctx.calibration.numpy().tobytes()).hexdigest()[:24]
    importance, width_costs = _importance(
        ctx, calibration_hash,
        SearchSpace(ctx.base, None, options.mlp_multiple).widths() if options.allocated_seeds else None,
        options.mlp_selection)
    space = search_space(ctx.base, importance, options)
    table = latency_table_for(ctx, options, space.widths()) if options.latency_speedup else None
    budget = make_budget(ctx.base, ratio, options, table)
    scorer = CandidateScorer(ctx.model, windows, options.cache_mb * 2**20)
    tracks = {"main": options, **({"skip-free": options.skip_free()} if options.skip_free_track else {})}
    runs = {track: run_track(ctx, track, track_options, importance, width_costs, budget, scorer, ratio,
                             calibration_hash, table)
            for track, track_options in tracks.items()}

    if final is None:
        track = min(runs, key=lambda t: (runs[t].search.best.ppl, t != "main"))
        chosen, choice = runs[track].search.best, None
    else:
        fit, held = final
        choice = reformed_choice(runs, options.final_candidates, ctx.base, ctx.progress,
                                 lambda spec: reformed_perplexity(ctx.model, spec, fit, held, ctx.batch_size))
        track, chosen = choice.track, choice.candidate
    search = runs["main"].search
    history = [row for run in runs.values() for row in run.search.history]
    notes = {"method": "evolution", "mlp_multiple": options.mlp_multiple, "search_ppl": round(chosen.ppl, 4),
             **({"track": track} if len(runs) > 1 else {}),
             **({"reformed_ppl": round(choice.reformed_ppl, 4)} if choice else {})}
    spec = genome_spec(chosen.genome, ctx.base, notes)
    metrics = {"search_ppl": chosen.ppl, "seed_ppl": search.history[0]["seed_ppl"],
               "generations": search.generation,
               "candidates_scored": sum(len(run.search.seen) for run in runs.values()),
               "fitness_windows": list(windows.shape),
               "seconds_per_candidate": _mean_seconds(history), "prefix_reuse": _mean(history, "prefix_reuse"),
               "resumed_from_generation": runs["main"].resumed_from,
               "stopped_by_time_limit": any(run.stopped for run in runs.values())}
    if len(runs) > 1:
        metrics["tracks"] = {t: {"search_ppl": run.search.best.ppl, "candidates_scored": len(run.search.seen),
                                 "resumed_from_generation": run.resumed_from} for t, run in runs.items()}
        metrics["chosen_track"] = track
    if choice is not None:
        metrics.update(final_choice=choice.rows, final_windows=list(final[1].shape), reformed_ppl=choice.reformed_ppl)
    if table is not None:
        metrics["predicted_speedup"] = table.speedup(layer_shapes(chosen.genome, ctx.base))
    if ctx.out_dir is not None:
        if choice is not None:
            (ctx.out_dir / "final_choice.json").write_text(json.dumps(choice.rows, indent=1) + "\n")
        if table is not None:
            (ctx.out_dir / "latency_table.json").write_text(json.dumps(table.to_dict(), indent=1) + "\n")
    return MethodResult(spec=spec, metrics=metrics)


# Options that do not change a track's search, so its checkpoint resumes whatever they are.
AFTER_THE_SEARCH = {"skip_free_track", "final_choice", "final_candidates", "final_windows"}


@dataclass
class TrackRun:
    search: EvolutionSearch
    stopped: bool  # by the time limit
    resumed_from: int | None  # the generation its checkpoint had reached


def run_track(ctx: MethodContext, track: str, options: EvolutionOptions, importance: list[LayerImportance],
              width_costs: WidthCosts | None, budget: Budget, scorer: CandidateScorer, ratio: float,
              calibration_hash: str, table: LatencyTable | None) -> TrackRun:
    """One search from the uniform (and allocated) seeds, resumed from and checkpointed to its own file; its log
    and plot."""
    space = search_space(ctx.base, importance, options)
    search = EvolutionSearch(space, budget, lambda genome: scorer.perplexity(genome_spec(genome, ctx.base)),
                             options, ctx.seed)
    key = fingerprint("evolution", options.model_dump(exclude=AFTER_THE_SEARCH), ratio, ctx.seed, ctx.base.to_dict(),
                      calibration_hash, table.to_dict() if table else None)
    state = load_checkpoint(ctx.state_dir, key, track) if ctx.state_dir else None
    if state is not None:
        search.load_state_dict(state)
    resumed_from = search.generation if state is not None else None

    def checkpoint(state: dict) -> None:
        if ctx.state_dir is not None:
            save_checkpoint(ctx.state_dir, {**state, "fingerprint": key}, track)
        if ctx.out_dir is not None:
            write_log(ctx.out_dir, search.history, track)

    uniform = seed_genomes(ctx.base, importance, space, budget)
    allocated = allocated_genomes(uniform, importance, width_costs) if width_costs is not None else []
    seeds = [("uniform", g) for g in uniform] + [("allocated", g) for g in allocated]
    stopped = run_generations(search, seeds, checkpoint,
                              _stats_per_generation(scorer), ctx.progress,
                              desc="evolution" if track == "main" else f"evolution ({track})")
    if ctx.out_dir is not None:
        write_log(ctx.out_dir, search.history, track)
        title = f"evolution at ratio {ratio}" + (f", speed-up >= {options.latency_speedup}" if table else "") + \
            ("" if track == "main" else f", {track} track")
        plot_convergence(ctx.out_dir / track_file("convergence.png", track), search.history, title)
    return TrackRun(search, stopped, resumed_from)


@dataclass
class FinalChoice:
    track: str
    candidate: Candidate
    reformed_ppl: float
    rows: list[dict]  # every finalist: track, origin, search and reformed perplexity, ratio, chosen


def reformed_choice(runs: dict[str, TrackRun], per_track: int, base: BaseDims, progress: bool,
                    score: Callable[[ArchSpec], float]) -> FinalChoice:
    """The finalist with the lowest `score` (perplexity after reform, on held-out windows): each track's best
    `per_track` candidates, uniform seeds and allocated seeds (a seed is kept when nothing beats it; the seed
    the fitness ranks first need not be the best after reform); ties go to the earlier finalist."""
    finalists, keys = [], set()
    for track, run in runs.items():
        ranked = [(f"parent {i + 1}", c) for i, c in enumerate(run.search.parents[:per_track])]
        for kind in ("uniform", "allocated"):
            seeds = [c for c in run.search.seeds if run.search.seed_kinds[c.key] == kind]
            ranked += [(f"{kind} seed {i + 1}", c) for i, c in enumerate(seeds[:per_track])]
        for origin, candidate in ranked:
            if candidate.key not in keys:
                keys.add(candidate.key)
                finalists.append((track, origin, candidate))
    rows = [{"track": track, "origin": origin, "search_ppl": candidate.ppl,
             "reformed_ppl": score(genome_spec(candidate.genome, base)),
             "ratio": round(genome_ratio(candidate.genome, base), 6), "chosen": False}
            for track, origin, candidate in tqdm(finalists, desc="final choice", unit="cand", disable=not progress)]
    best = min(range(len(rows)), key=lambda i: rows[i]["reformed_ppl"])  # the first of equal scores
    rows[best]["chosen"] = True
    return FinalChoice(rows[best]["track"], finalists[best][2], rows[best]["reformed_ppl"], rows)


def reformed_perplexity(model: torch.nn.Module, spec: ArchSpec, fit: torch.Tensor, held: torch.Tensor,
                        batch_size: int = 1) -> float:
    """The perplexity on the `held` windows of `spec` after `reformed_model` on the `fit` windows."""
    return calibration_perplexity(reformed_model(model, spec, fit, batch_size), held, batch_size)


def reformed_model(model: torch.nn.Module, spec: ArchSpec, fit: torch.Tensor, batch_size: int = 1) -> torch.nn.Module:
    """`spec` sliced from `model` and reformed as the reform stage does by default (sequential ADMM, the paper's
    rho and iterations) on the `fit` windows."""
    sculpted = slice_model(model, spec)
    reform_sculpted(sculpted, model, spec, fit, ReformSettings("admm"), batch_size, progress=False)
    return sculpted


def final_windows(calibration: torch.Tensor,
                  options: EvolutionOptions) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For the reformed final choice, the windows the finalists are reformed on and the last `final_windows`
    (whole) they are scored on; None without one."""
    if options.final_choice != "reformed":
        return None
    count = calibration.shape[0]
    if options.fitness_windows + options.final_windows > count:
        raise SculptError(f"the reformed final choice scores the finalists on the last {options.final_windows} "
                          f"calibration windows, which must not overlap the {options.fitness_windows} fitness windows, "
                          f"and the calibration has {count}: raise --calib-samples or lower the final_windows option")
    return calibration[: count - options.final_windows], calibration[count - options.final_windows:]


def fitness_windows(calibration: torch.Tensor, options: EvolutionOptions) -> torch.Tensor:
    count, length = calibration.shape
    if options.fitness_windows > count:
        raise SculptError(f"evolution scores candidates on {options.fitness_windows} calibration windows, the "
                          f"calibration has {count}: raise --calib-samples or lower the fitness_windows option")
    if options.fitness_seqlen > length:
        raise SculptError(f"fitness_seqlen {options.fitness_seqlen} exceeds the calibration window length {length}: "
                          "raise --calib-seqlen or lower the fitness_seqlen option")
    return calibration[: options.fitness_windows, : options.fitness_seqlen or length]


def make_budget(base: BaseDims, ratio: float, options: EvolutionOptions, table: LatencyTable | None) -> Budget:
    """The parameter window [ratio - tolerance, ratio]; with a speed-up target the ratio is only a cap
    and the window is on the predicted speed-up instead."""
    if table is None:
        return Budget(base, max_ratio=ratio, min_ratio=ratio - options.tolerance)
    target = options.latency_speedup
    return Budget(base, max_ratio=ratio, min_ratio=0.0,
                  speedup=lambda genome: table.speedup(layer_shapes(genome, base)),
                  min_speedup=target, max_speedup=target * (1 + options.latency_tolerance))


def seed_genomes(base: BaseDims, importance: list[LayerImportance], space: SearchSpace, budget: Budget) -> list[Genome]:
    """Per attention shape, the uniform architecture with the widest common MLP width the budget allows."""
    widths, seeds = space.widths(), []
    for shape in attention_shapes(base):
        low, high, best = 0, len(widths) - 1, None
        while low <= high:  # verdicts only grow with width: bisect for the widest that does not overshoot
            middle = (low + high) // 2
            genome = genome_from_spec(uniform_spec(base, importance, shape, widths[middle]))
            if budget.verdict(genome) == "shrink":
                high = middle - 1
            else:
                best, low = genome, middle + 1
        if best is not None:
            seeds.append(best)
    return seeds


def allocated_genomes(seeds: list[Genome], importance: list[LayerImportance], width_costs: WidthCosts) -> list[Genome]:
    """Per uniform seed, the same heads and total MLP channels, the widths spread over the layers by their removal
    costs (mlp_width_costs.py), each layer keeping its most important channels."""
    allocated = []
    for seed in seeds:
        widths = allocate_widths(width_costs, sum(len(gene.mlp_channels) for gene in seed))
        allocated.append(tuple(replace(gene, mlp_channels=top_units(scores.mlp_channels, width))
                               for gene, scores, width in zip(seed, importance, widths)))
    return allocated


def latency_table_for(ctx: MethodContext, options: EvolutionOptions, widths) -> LatencyTable:
    """The table for this model, device and dtype: from the resume directory, the given file or the
    cache (~/.cache/llm-sculpt/latency), else measured now (about a minute) and stored there."""
    key = machine_key(ctx.model, ctx.base, options.latency_context, widths)
    shared = Path(options.latency_table) if options.latency_table else cache_root() / "latency" / f"{fingerprint(key)}.json"
    places = ([ctx.state_dir / "latency_table.json"] if ctx.state_dir else []) + [shared]
    for path in places:
        if path.is_file():
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            if table.machine == key:
                break
            if path == shared and options.latency_table:
                raise SculptError(f"latency table {path} was measured for another model, device, dtype or context: "
                                  "delete it, or point the latency_table option at another file")
    else:
        table = measure_latency_table(ctx.model, ctx.base, widths, options.latency_context, progress=ctx.progress)
    for path in places:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table.to_dict(), indent=1) + "\n")
    return table


def _importance(ctx: MethodContext, calibration_hash: str, widths: tuple[int, ...] | None,
                selection: str = "importance") -> tuple[list[LayerImportance], WidthCosts | None]:
    """The importance (from the resume directory if there); given `widths`, every layer's removal cost of each
    MLP width (mlp_width_costs.py), from the same pass and a gradient pass over the calibration windows.
    With the "greedy" `selection`, the MLP channels score by greedy reform-aware removal (greedy_channels.py,
    the same passes) instead, and the width costs follow that ranking."""
    greedy = selection == "greedy"
    if greedy:
        calibration_hash = f"{calibration_hash}-greedy"  # a cached importance is reused for its own selection only
    cached = load_importance(ctx.state_dir, calibration_hash) if ctx.state_dir else None
    priced = widths is None or (cached is not None and cached[1] is not None and set(cached[1][0]) == set(widths))
    if cached is not None and priced:
        return cached[0], cached[1] if widths is not None else None
    fishers = (output_gradient_covariance(ctx.model, ctx.adapter, ctx.calibration, ctx.progress)
               if widths or greedy else None)
    downs = [ctx.adapter.mlp_linears(layer)[2] for layer in ctx.adapter.layers(ctx.model)]
    costs: WidthCosts = []
    channels: list[torch.Tensor] = []  # the greedy channel scores

    def keep_statistics(index: int, grams: dict[str, GramAccumulator], scores: LayerImportance) -> None:
        down, gram = downs[index].weight.detach(), grams[MLP_OUTPUT].mean()
        if greedy:
            channels.append(greedy_channel_scores(down, gram, fishers[index]))
        if widths:
            ranked = channels[-1] if greedy else scores.mlp_channels
            order = torch.argsort(ranked, descending=True, stable=True)
            costs.append(removal_costs(down, gram, fishers[index], order, widths))

    importance = layer_importance(ctx.model, ctx.adapter, ctx.calibration, ctx.batch_size, ctx.progress,
                                  on_layer=keep_statistics if fishers is not None else None)
    if greedy:
        importance = [replace(scores, mlp_channels=ranked) for scores, ranked in zip(importance, channels)]
    width_costs = costs if widths else None
    if ctx.state_dir is not None:
        save_importance(ctx.state_dir, calibration_hash, importance, width_costs)
    return importance, width_costs


def _stats_per_generation(scorer: CandidateScorer):
    last = {"candidates": 0, "seconds": 0.0, "run": 0, "reused": 0}

    def describe() -> dict:
        s = scorer.stats
        count, seconds = s.candidates - last["candidates"], s.seconds - last["seconds"]
        run, reused = s.layers_run - last["run"], s.layers_reused - last["reused"]
        last.update(candidates=s.candidates, seconds=s.seconds, run=s.layers_run, reused=s.layers_reused)
        return {"seconds_per_candidate": round(seconds / max(count, 1), 4),
                "prefix_reuse": round(reused / max(run + reused, 1), 4)}
    return describe


def _mean(history: list[dict], key: str) -> float | None:
    values = [row[key] for row in history if key in row]
    return sum(values) / len(values) if values else None


def _mean_seconds(history: list[dict]) -> float | None:
    pairs = [(row["seconds_per_candidate"], row["scored"]) for row in history if "seconds_per_candidate" in row]
    count = sum(n for _, n in pairs)
    return sum(s * n for s, n in pairs) / count if count else None
