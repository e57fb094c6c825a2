"""The `evolution` method: wires the search to a model, its calibration data and the stage's stores.

Importance (once, kept in the state store); with `mlp_selection: greedy`, the MLP channels ranked by
greedy reform-aware removal, and with `allocated_seeds`, every layer's removal cost of each MLP width
(same pass, plus a gradient pass); the seeds and the budget (seeds.py; with a latency table when a
speed-up is asked for), the executor that scores the candidates (executor.py: here, or a pool of
workers the stage picks), one search per track (the main one, and with `skip_free_track` one with the
skip genes off) run side by side and each checkpointed after every generation (checkpoints.py); the final
choice (final_choice.py); and the outputs: `search.jsonl` (per track),
`final_choice.json`, `latency_table.json`, and the generations for the stage's convergence charts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch

from pipeline.compress.calibration.layer_stream import GramAccumulator
from pipeline.compress.calibration.projection_statistics import InputStatistics, LayerStatistics
from pipeline.compress.importance.baseline_scores import FLAP_DEFAULT_METRIC, flap_adaptive_scores
from pipeline.compress.importance.greedy_channels import greedy_channel_scores
from pipeline.compress.importance.mlp_width_costs import output_gradient_covariance, removal_costs
from pipeline.compress.importance.obs_importance import LayerImportance, layer_importance
from pipeline.compress.registry import Convergence, MethodContext, MethodResult, register
from pipeline.errors import SculptError
from pipeline.models.adapters import MLP_OUTPUT, OUTPUT_PROJECTIONS

from .checkpoints import (
    CHART,
    WidthCosts,
    load_checkpoint,
    load_importance,
    save_checkpoint,
    save_importance,
    track_file,
    write_log,
)
from .compensation import InputMeans, compensation_weights
from .executor import LocalExecutor, ScoringJob, SearchExecutor
from .final_choice import final_windows, reformed_choice
from .generations import EvolutionOptions, EvolutionSearch, Track, fingerprint, run_generations, search_space
from .genome import Budget, SearchSpace, genome_spec, layer_shapes
from .latency_table import LatencyTable, machine_key, measure_latency_table
from .seeds import FlapScores, allocated_genomes, flap_genome, make_budget, seed_genomes


@register("evolution", "evolutionary search from the importance init (Shen et al. 2024): per-layer heads, MLP "
          "widths, skipped sublayers and depth, in a parameter and optional measured-latency budget", EvolutionOptions)
def run_evolution(ctx: MethodContext, ratio: float, options: EvolutionOptions) -> MethodResult:
    windows = fitness_windows(ctx.calibration, options)
    final = final_windows(ctx.calibration, options, ctx.held_out)
    calibration_hash = hashlib.sha256(ctx.calibration.numpy().tobytes()).hexdigest()[:24]
    inputs = _importance(
        ctx, calibration_hash,
        SearchSpace(ctx.base, None, options.mlp_multiple).widths() if options.allocated_seeds else None,
        options.mlp_selection, options.flap_seed, options.compensate)
    space = search_space(ctx.base, inputs.importance, options)
    table = latency_table_for(ctx, options, space.widths()) if options.latency_speedup else None
    budget = make_budget(ctx.base, ratio, options, table)
    tracks = {"main": options, **({"skip-free": options.skip_free()} if options.skip_free_track else {})}
    job = ScoringJob(ctx.model, windows, options.cache_mb * 2**20, final, ctx.batch_size, inputs.means)
    executor = (ctx.executor or LocalExecutor)(job)
    try:
        runs = run_tracks(ctx, tracks, inputs, budget, executor, ratio, calibration_hash, table)
        if final is None:
            track = min(runs, key=lambda t: (runs[t].search.best.ppl, t != "main"))
            chosen, choice = runs[track].search.best, None
        else:
            choice = reformed_choice({t: run.search for t, run in runs.items()}, options.final_candidates, ctx.base,
                                     ctx.progress, executor.reformed_batch, options.final_tolerance,
                                     options.compensate)
            track, chosen = choice.track, choice.candidate
        scored_by = executor.describe()
    finally:
        executor.close()
    search = runs["main"].search
    history = [row for run in runs.values() for row in run.search.history]
    notes = {"method": "evolution", "mlp_multiple": options.mlp_multiple, "search_ppl": round(chosen.ppl, 4),
             **({"track": track} if len(runs) > 1 else {}),
             **({"reformed_ppl": round(choice.reformed_ppl, 4)} if choice else {})}
    spec = genome_spec(chosen.genome, ctx.base, notes, out_bias=options.compensate)
    weights = compensation_weights(ctx.model, ctx.adapter, spec, inputs.means) if options.compensate else {}
    metrics = {"search_ppl": chosen.ppl, "seed_ppl": search.history[0]["seed_ppl"],
               "generations": search.generation,
               "candidates_scored": sum(len(run.search.seen) for run in runs.values()),
               "fitness_windows": list(windows.shape),
               "seconds_per_candidate": _mean_seconds(history), "prefix_reuse": _mean(history, "prefix_reuse"),
               "resumed_from_generation": runs["main"].resumed_from,
               "stopped_by_time_limit": any(run.stopped for run in runs.values()), "scored_by": scored_by}
    if len(runs) > 1:
        metrics["tracks"] = {t: {"search_ppl": run.search.best.ppl, "candidates_scored": len(run.search.seen),
                                 "resumed_from_generation": run.resumed_from} for t, run in runs.items()}
        metrics["chosen_track"] = track
    if choice is not None:
        metrics.update(final_choice=choice.rows, final_windows=list(final[1].shape), reformed_ppl=choice.reformed_ppl)
    if table is not None:
        metrics["predicted_speedup"] = table.speedup(layer_shapes(chosen.genome, ctx.base))
    if ctx.outputs is not None:
        if choice is not None:
            ctx.outputs.save("final_choice.json", choice.rows)
        if table is not None:
            ctx.outputs.save("latency_table.json", table.to_dict())
    title = f"evolution at ratio {ratio}" + (f", speed-up >= {options.latency_speedup}" if table else "")
    charts = [Convergence(track_file(CHART, t), title + ("" if t == "main" else f", {t} track"), run.search.history)
              for t, run in runs.items()]
    return MethodResult(spec=spec, weights=weights, metrics=metrics, convergence=charts)


# Options that do not change a track's search, so its checkpoint resumes whatever they are.
AFTER_THE_SEARCH = {"skip_free_track", "final_choice", "final_tolerance", "final_candidates", "final_windows",
                    "final_seqlen"}


@dataclass
class SeedInputs:
    """What the seeds are made from: the importance, and the width costs and FLAP scores where asked for; and the
    output projections' input means where candidates are compensated."""

    importance: list[LayerImportance]
    width_costs: WidthCosts | None = None
    flap_scores: FlapScores | None = None
    means: InputMeans | None = None


@dataclass
class TrackRun:
    search: EvolutionSearch
    stopped: bool  # by the time limit
    resumed_from: int | None  # the generation its checkpoint had reached


def run_tracks(ctx: MethodContext, tracks: dict[str, EvolutionOptions], inputs: SeedInputs, budget: Budget,
               executor: SearchExecutor, ratio: float, calibration_hash: str,
               table: LatencyTable | None) -> dict[str, TrackRun]:
    """The tracks' searches from their seeds (uniform, and allocated and FLAP's where asked for), run side by side
    (their candidates scored together by `executor`), each resumed from and checkpointed to its own state, each
    with its log."""
    prepared = [_prepare_track(ctx, name, options, inputs, budget, ratio, calibration_hash, table)
                for name, options in tracks.items()]

    def score(genomes, on_done):
        specs = [genome_spec(genome, ctx.base, out_bias=budget.out_bias) for genome in genomes]
        return executor.score_batch(specs, on_done)

    run_generations([track for track, _ in prepared], score, ctx.progress,
                    desc="evolution" if len(prepared) == 1 else f"evolution ({len(prepared)} tracks)")
    runs = {}
    for track, resumed_from in prepared:
        if ctx.outputs is not None:
            write_log(ctx.outputs, track.search.history, track.name)
        runs[track.name] = TrackRun(track.search, track.stopped, resumed_from)
    return runs


def _prepare_track(ctx: MethodContext, name: str, options: EvolutionOptions, inputs: SeedInputs, budget: Budget,
                   ratio: float, calibration_hash: str, table: LatencyTable | None) -> tuple[Track, int | None]:
    """One track's search, resumed from its checkpoint when that matches, with its seeds and its checkpointing;
    and the generation it resumed from."""
    space = search_space(ctx.base, inputs.importance, options)
    search = EvolutionSearch(space, budget, options, ctx.seed)
    key = fingerprint("evolution", options.model_dump(exclude=AFTER_THE_SEARCH), ratio, ctx.seed, ctx.base.to_dict(),
                      calibration_hash, table.to_dict() if table else None)
    state = load_checkpoint(ctx.state, key, name) if ctx.state is not None else None
    if state is not None:
        search.load_state_dict(state)
    resumed_from = search.generation if state is not None else None

    def checkpoint(state: dict) -> None:
        if ctx.state is not None:
            save_checkpoint(ctx.state, {**state, "fingerprint": key}, name)
        if ctx.outputs is not None:
            write_log(ctx.outputs, search.history, name)

    uniform = seed_genomes(ctx.base, inputs.importance, space, budget)
    seeds = [("uniform", g) for g in uniform]
    if inputs.width_costs is not None:
        seeds += [("allocated", g) for g in allocated_genomes(uniform, inputs.importance, inputs.width_costs)]
    if inputs.flap_scores is not None:
        flap = flap_genome(ctx.base, inputs.flap_scores, budget, options.mlp_multiple)
        if all((gene.attention or options.attention_skip) and (gene.mlp or options.mlp_skip) for gene in flap):
            seeds.append(("flap", flap))  # not where it skips what this track may not (the skip-free track)
    return Track(name, search, seeds, checkpoint), resumed_from


def fitness_windows(calibration: torch.Tensor, options: EvolutionOptions) -> torch.Tensor:
    count, length = calibration.shape
    if options.fitness_windows > count:
        raise SculptError(f"evolution scores candidates on {options.fitness_windows} calibration windows, the "
                          f"calibration has {count}: raise --calib-samples or lower the fitness_windows option")
    if options.fitness_seqlen > length:
        raise SculptError(f"fitness_seqlen {options.fitness_seqlen} exceeds the calibration window length {length}: "
                          "raise --calib-seqlen or lower the fitness_seqlen option")
    return calibration[: options.fitness_windows, : options.fitness_seqlen or length]


def latency_table_for(ctx: MethodContext, options: EvolutionOptions, widths) -> LatencyTable:
    """The table for this model, device, dtype and processor: from the state store or the shared cache, else
    measured now (about a minute) and kept in both."""
    key = machine_key(ctx.model, ctx.base, options.latency_context, widths, ctx.machine)
    shared = f"latency/{fingerprint(key)}.json"
    places = [(store, name) for store, name in ((ctx.state, "latency_table.json"), (ctx.cache, shared))
              if store is not None]
    for store, name in places:
        data = store.load(name)
        if data is not None and data.get("machine") == key:
            table = LatencyTable.from_dict(data)
            break
    else:
        table = measure_latency_table(ctx.model, ctx.base, widths, options.latency_context, progress=ctx.progress,
                                      processor=ctx.machine)
    for store, name in places:
        store.save(name, table.to_dict())
    return table


def _importance(ctx: MethodContext, calibration_hash: str, widths: tuple[int, ...] | None,
                selection: str = "importance", flap: bool = False, means: bool = False) -> SeedInputs:
    """The importance (from the resume directory if there); given `widths`, every layer's removal cost of each
    MLP width (mlp_width_costs.py), from the same pass and a gradient pass over the calibration windows.
    With the "greedy" `selection`, the MLP channels score by greedy reform-aware removal (greedy_channels.py,
    the same passes) instead, and the width costs follow that ranking. With `flap`, also FLAP's standardised
    scores of every layer's KV groups and channels (its default fluctuation metric), from the same pass; with
    `means`, the dense input means of every layer's output projections (for bias compensation), from it too."""
    greedy = selection == "greedy"
    if greedy:
        calibration_hash = f"{calibration_hash}-greedy"  # a cached importance is reused for its own selection only
    cached = load_importance(ctx.state, calibration_hash) if ctx.state is not None else None
    if cached is not None:
        importance, cached_costs, cached_flap, cached_means = cached
        priced = widths is None or (cached_costs is not None and set(cached_costs[0]) == set(widths))
        if priced and (cached_flap is not None or not flap) and (cached_means is not None or not means):
            return SeedInputs(importance, cached_costs if widths is not None else None, cached_flap if flap else None,
                              cached_means if means else None)
    fishers = (output_gradient_covariance(ctx.model, ctx.adapter, ctx.calibration, ctx.progress)
               if widths or greedy else None)
    layers = list(ctx.adapter.layers(ctx.model))
    costs: WidthCosts = []
    channels: list[torch.Tensor] = []  # the greedy channel scores
    flap_scores: FlapScores = []
    input_means: InputMeans = []

    def keep_statistics(index: int, grams: dict[str, GramAccumulator], scores: LayerImportance) -> None:
        if means:
            input_means.append({role: grams[role].input_mean().cpu() for role in OUTPUT_PROJECTIONS})
        o, down = (ctx.adapter.output_projection(layers[index], role).weight.detach() for role in OUTPUT_PROJECTIONS)
        if flap:  # on the same (dense) statistics FLAP's own pass gathers
            stats = LayerStatistics(*(InputStatistics.from_accumulator(grams[role]) for role in OUTPUT_PROJECTIONS))
            flap_scores.append(flap_adaptive_scores(o, down, stats, FLAP_DEFAULT_METRIC, ctx.base.head_dim,
                                                    ctx.base.group_size))
        if fishers is None:
            return
        gram = grams[MLP_OUTPUT].mean()
        if greedy:
            channels.append(greedy_channel_scores(down, gram, fishers[index]))
        if widths:
            ranked = channels[-1] if greedy else scores.mlp_channels
            order = torch.argsort(ranked, descending=True, stable=True)
            costs.append(removal_costs(down, gram, fishers[index], order, widths))

    importance = layer_importance(ctx.model, ctx.adapter, ctx.calibration, ctx.batch_size, ctx.progress,
                                  on_layer=keep_statistics if fishers is not None or flap or means else None)
    if greedy:
        importance = [replace(scores, mlp_channels=ranked) for scores, ranked in zip(importance, channels)]
    width_costs = costs if widths else None
    if ctx.state is not None:
        save_importance(ctx.state, calibration_hash, importance, width_costs, flap_scores if flap else None,
                        input_means if means else None)
    return SeedInputs(importance, width_costs, flap_scores if flap else None, input_means if means else None)


def _mean(history: list[dict], key: str) -> float | None:
    values = [row[key] for row in history if key in row]
    return sum(values) / len(values) if values else None


def _mean_seconds(history: list[dict]) -> float | None:
    pairs = [(row["seconds_per_candidate"], row["scored"]) for row in history if "seconds_per_candidate" in row]
    count = sum(n for _, n in pairs)
    return sum(s * n for s, n in pairs) / count if count else None
