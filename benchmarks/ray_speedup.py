"""How much faster is the evolutionary search on a pool of Ray actors? The same search, timed per executor.

    python -m benchmarks.ray_speedup                      # 1 actor vs 2 actors; --executors local,1,2 adds local

Runs `run_evolution` on the default model (SmolLM2-135M) with the same seed and options once per executor
(`local`, or a number: a pool of that many Ray actors of --cpus-per-actor cores each, on a local Ray instance or
$RAY_ADDRESS's cluster), checks that every run chose the same architecture with the same scores, and prints a
Markdown table: wall time of the search (importance pass excluded: it is computed once, before the timed runs,
and every run reads it from its state store), the pool's start-up (actors loading the model) inside it, seconds
per candidate, peak resident memory per actor, and the speed-up over the first executor listed. Written to
--out/ray_speedup.md with a JSON copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from pipeline.compress.registry import MethodContext
from pipeline.compress.search import evolution
from pipeline.compress.search.executor import LocalExecutor
from pipeline.compress.search.generations import EvolutionOptions
from pipeline.data import calibration_windows, load_corpus
from pipeline.models.adapters import adapter_for
from pipeline.models.loading import load_model
from pipeline.stages.method_store import FolderStore
from pipeline.stages.ray_executor import PoolShape, RayExecutor

# A short search with every fan-out the method has: generations, two tracks, the reformed final choice.
OPTIONS = {"population": 6, "mutations": 3, "crossovers": 2, "parents": 2, "generations": 1,
           "skip_free_track": True, "final_choice": "reformed", "final_candidates": 1, "final_windows": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--executors", default="1,2", help="comma list: local, or a number of Ray actors")
    parser.add_argument("--cpus-per-actor", type=int, default=1)
    parser.add_argument("--search-options", default=json.dumps(OPTIONS), help="JSON: the evolution options")
    parser.add_argument("--calib-corpus", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (local executor)")
    parser.add_argument("--out", default="bench-out/ray_speedup")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    adapter = adapter_for(loaded.model.config)
    corpus = load_corpus(args.calib_corpus, "calibration", args.data_dir)
    calibration = calibration_windows(loaded.tokenizer, corpus, args.calib_samples, args.calib_seqlen, seed=0)
    options = EvolutionOptions(**json.loads(args.search_options))
    out = Path(args.out)
    shutil.rmtree(out / "runs", ignore_errors=True)

    def context(name: str) -> MethodContext:
        folders = [out / "runs" / name / part for part in ("out", "state")]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        return MethodContext(model=loaded.model, tokenizer=loaded.tokenizer, adapter=adapter,
                             base=adapter.dims(loaded.model.config), calibration=calibration, seed=0, progress=False,
                             outputs=FolderStore(folders[0]), state=FolderStore(folders[1]))

    began = time.perf_counter()  # the importance pass, once: a search of the seeds alone writes it
    evolution.run_evolution(context("importance"), args.ratio, options.model_copy(update={
        "generations": 0, "population": options.parents, "mutations": 0, "crossovers": 0, "final_choice": "fitness",
        "skip_free_track": False}))
    importance_s = time.perf_counter() - began
    primed = out / "runs" / "importance" / "state" / "importance.pt"

    rows, results = [], {}
    for name in [part.strip() for part in args.executors.split(",") if part.strip()]:
        ctx = context(name)
        shutil.copy(primed, ctx.state.folder / "importance.pt")
        startup: list[float] = []
        if name == "local":
            ctx.executor = LocalExecutor
        else:
            shape = PoolShape(int(name), args.cpus_per_actor)

            def pool(job, shape=shape):
                started = time.perf_counter()
                executor = RayExecutor(job, shape)
                startup.append(time.perf_counter() - started)
                return executor
            ctx.executor = pool
        began = time.perf_counter()
        result = evolution.run_evolution(ctx, args.ratio, options)
        seconds = time.perf_counter() - began
        metrics = result.metrics
        results[name] = (result.spec.to_dict(), metrics.get("final_choice"), metrics["search_ppl"])
        rows.append({"executor": name if name == "local" else f"ray, {name} actor(s)", "search_s": round(seconds, 1),
                     "startup_s": round(startup[0], 1) if startup else 0.0,
                     "candidates": metrics["candidates_scored"],
                     "finalists": len(metrics.get("final_choice") or []),
                     "seconds_per_candidate": round(metrics["seconds_per_candidate"], 3),
                     "peak_rss_per_actor_mib": metrics["scored_by"].get("peak_rss_per_actor_mib"),
                     "search_ppl": metrics["search_ppl"]})
        print(json.dumps(rows[-1]), flush=True)
    same = all(value == next(iter(results.values())) for value in results.values())
    first = rows[0]["search_s"]
    given = json.dumps(options.model_dump(include=set(json.loads(args.search_options))))
    lines = [f"Evolutionary search on {args.model} at ratio {args.ratio}: options {given}, calibration {args.calib_samples} x "
             f"{args.calib_seqlen} tokens; importance pass {importance_s:.1f} s, once, outside the timings; "
             f"{torch.get_num_threads()} torch thread(s) here, {args.cpus_per_actor} per actor.", "",
             "| executor | search s | of which pool start-up s | candidates + finalists | s / candidate (worker) | "
             "peak RSS per actor MiB | speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['executor']} | {r['search_s']} | {r['startup_s']} | {r['candidates']} + {r['finalists']} | "
              f"{r['seconds_per_candidate']} | {r['peak_rss_per_actor_mib'] or '-'} | {first / r['search_s']:.2f} |"
              for r in rows]
    lines += ["", f"same architecture, scores and finalists from every executor: {'yes' if same else 'NO'}"]
    table = "\n".join(lines)
    print(table)
    (out / "ray_speedup.md").write_text(table + "\n")
    (out / "ray_speedup.json").write_text(json.dumps({"rows": rows, "importance_s": importance_s, "same": same,
                                                      "args": vars(args)}, indent=1))
    if not same:
        raise SystemExit("the executors disagree: a bug (their results must be identical)")


if __name__ == "__main__":
    main()
