"""Evolutionary search vs the uniform importance initialisation, each followed by the same reform step.

    python -m benchmarks.search_vs_uniform --device cuda --eval-windows 0            # the README table
    python -m benchmarks.search_vs_uniform --ratios 0.8 --eval-windows 1 --eval-seqlen 512 \\
        --search-options '{"population": 6, "generations": 1}'                       # a CPU smoke run

For every ratio it runs the whole pipeline (search -> reform -> slice -> validate) twice, with
`--method uniform` and `--method evolution`, and the same `--reform` method. The search's parameter
budget is the decoder ratio the uniform run reached (uniform rounds the target to whole heads and
MLP multiples, up or down), so both models have the same parameter count. It reports the
evaluation perplexity (WikiText-2 test by default), the measured decode speed-up against the
dense model and the search wall time. With `--latency-speedup X` it adds one evolution run with
a latency budget (parameters capped at `--latency-ratio`) and checks the measured decode
speed-up against X (within 5%). Each run is a versioned artifact under OUT/artifacts, so an
interrupted benchmark resumes where it stopped. Writes OUT/results.md, results.json and
ppl_vs_ratio.png, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


from benchmarks.charts import ppl_vs_ratio
from benchmarks.comparison import PERPLEXITY_ONLY, STAGES
from pipeline.artifacts import read_manifest
from pipeline.recipe import build_recipe
from pipeline.workflow import run_pipeline


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = json.loads(args.search_options)
    rows, began = [], time.perf_counter()
    for ratio in args.ratios:
        rows.append(run_one(args, out, "uniform", ratio, {}))
        print_row(rows[-1])
        # Same parameters for both: uniform rounds the target to whole heads and MLP multiples (0.9 -> 0.906
        # on SmolLM2), so the search gets the parameter count uniform reached as its budget, not the target.
        rows.append(run_one(args, out, "evolution", ratio, options, budget=ceil_ratio(rows[-1]["decoder_ratio"])))
        print_row(rows[-1])
    if args.latency_speedup:
        # the table is timed at the context the speed-up is then measured at
        latency_options = {"latency_context": args.decode_context, **options, "latency_speedup": args.latency_speedup}
        rows.append(run_one(args, out, "evolution", args.latency_ratio, latency_options))
        print_row(rows[-1])
    table = markdown(rows, args)
    results = {"settings": vars(args), "rows": rows, "total_seconds": round(time.perf_counter() - began, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(table)
    plot(rows, out / "ppl_vs_ratio.png", args)
    print("\n" + table)
    print(f"written to {out}/ (results.md, results.json, ppl_vs_ratio.png); {results['total_seconds']:.0f} s in all")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="source model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.9, 0.8, 0.7, 0.6, 0.5],
                        help="decoder-parameter ratios, comma-separated")
    parser.add_argument("--reform", default="none", help="reform.method applied after both searches (as in the recipe)")
    parser.add_argument("--search-options", default="{}", help="JSON of evolution options (see `sculpt methods`)")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR)")
    parser.add_argument("--calib-corpus", default="auto")
    parser.add_argument("--eval-corpus", default="auto", help="evaluation corpus (auto: WikiText-2 test)")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=0, help="evaluation windows (0: the whole split)")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--latency-speedup", type=float, default=None, help="also run a latency-budget search, e.g. 1.5")
    parser.add_argument("--latency-ratio", type=float, default=1.0, help="parameter cap of the latency-budget run")
    parser.add_argument("--decode-context", type=int, default=512, help="prompt tokens before timed decode steps")
    parser.add_argument("--decode-rounds", type=int, default=3, help="alternating dense/sliced decode timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/search_vs_uniform")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args()


def ceil_ratio(ratio: float) -> float:
    """A recorded (6-digit) decoder ratio rounded up, so the architecture it was measured on fits under it."""
    return math.ceil(ratio * 1e6 + 1e-3) / 1e6


def run_one(args, out: Path, method: str, ratio: float, options: dict, budget: float | None = None) -> dict:
    """One pipeline run at target `ratio`; `budget` (default: the target) is the decoder-ratio cap it gets."""
    label = method + ("-latency" if "latency_speedup" in options else "")
    budget = budget or ratio
    overrides = {  # the fast preset adds nothing: the method, its options and the reform are all given here
        "preset": "fast", "model.source": args.model, "model.device": args.device, "model.dtype": args.dtype, "seed": args.seed,
        "data.data_dir": args.data_dir, "data.calibration": args.calib_corpus, "data.evaluation": args.eval_corpus,
        "data.calib_samples": args.calib_samples, "data.calib_seqlen": args.calib_seqlen,
        "search.method": method, "search.ratio": budget, "search.options": options,
        "reform.method": args.reform,
        "validate.seq_len": args.eval_seqlen, "validate.max_windows": args.eval_windows or None,
        "validate.compare_source": True, "output": str(out / "artifacts" / f"{label}-{ratio}"),
        **PERPLEXITY_ONLY,  # the decode speed-up is timed below, dense and sliced side by side
    }
    print(f"\n=== {label} at ratio {ratio} (reform: {args.reform})", flush=True)
    artifact = run_pipeline(build_recipe(None, overrides, where="benchmark flags"), STAGES, progress=not args.quiet)
    stages = {s.name: s for s in read_manifest(artifact.path).stages}
    search, validate = stages["search"].metrics, stages["validate"].metrics
    row = {"method": label, "ratio": ratio, "budget": budget, "decoder_ratio": search["decoder_ratio"],
           "layers": search["layers"], "ppl": validate["ppl"], "dense_ppl": validate["ppl_source"],
           "eval_tokens": validate["eval_tokens"], "reform_seconds": stages["reform"].wall_s,
           "search_seconds": stages["search"].wall_s, "search_ppl": search.get("search_ppl"),
           "seed_ppl": search.get("seed_ppl"), "predicted_speedup": search.get("predicted_speedup"),
           "artifact": str(artifact.path)}
    row.update(decode_speedup(artifact.path, args))
    return row


_LOADED: dict = {}


def decode_speedup(path: Path, args) -> dict:
    """Measured decode step of the sliced model vs the dense source, as the latency table predicts it."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models.loading import load_model
    from pipeline.measures.latency import decode_throughput

    if "dense" not in _LOADED:  # one dense copy for the whole benchmark
        _LOADED["dense"] = load_model(args.model, dtype=args.dtype, device=args.device).model
    dense = _LOADED["dense"]
    sliced = AutoModelForCausalLM.from_pretrained(path / "slice" / "model", dtype=getattr(torch, args.dtype))
    sliced = sliced.to(args.device).eval()
    steps: dict[str, list[float]] = {"dense": [], "sliced": []}
    for _ in range(args.decode_rounds):  # alternated, so a slow spell of the machine hits both
        for name, model in (("dense", dense), ("sliced", sliced)):
            steps[name].append(decode_throughput(model, prompt_len=args.decode_context, new_tokens=32,
                                                 repeats=3).step.median_s)
    dense_step, sliced_step = min(steps["dense"]), min(steps["sliced"])  # the least disturbed round of each
    return {"decode_step_ms": round(sliced_step * 1e3, 3), "dense_step_ms": round(dense_step * 1e3, 3),
            "decode_speedup": round(dense_step / sliced_step, 3),
            "dense_step_spread": round(max(steps["dense"]) / dense_step, 3)}  # > 1.05: a noisy machine


def print_row(row: dict) -> None:
    print(f"--> {row['method']} {row['ratio']}: ppl {row['ppl']:.3f} (dense {row['dense_ppl']:.3f}), decode x"
          f"{row['decode_speedup']:.2f}, search {row['search_seconds']:.0f} s", flush=True)


def markdown(rows: list[dict], args) -> str:
    eval_text = f"{args.eval_windows or 'all'} windows of {args.eval_seqlen}"
    lines = [f"Evaluation perplexity ({args.eval_corpus}, {eval_text}); reform: `{args.reform}`; "
             f"device {args.device}, {args.dtype}; dense ppl {rows[0]['dense_ppl']:.3f}.", "",
             "| target ratio | decoder kept (uniform / evolution) | uniform ppl | evolution ppl | better | "
             "uniform decode x | evolution decode x | evolution layers | search s |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["method"], r["ratio"]): r for r in rows}
    for ratio in args.ratios:
        u, e = by[("uniform", ratio)], by[("evolution", ratio)]
        better = "tie" if e["ppl"] == u["ppl"] else "evolution" if e["ppl"] < u["ppl"] else "uniform"
        lines.append(f"| {ratio} | {u['decoder_ratio']:.3f} / {e['decoder_ratio']:.3f} | {u['ppl']:.3f} | "
                     f"{e['ppl']:.3f} | {better} | {u['decode_speedup']:.2f} | {e['decode_speedup']:.2f} | "
                     f"{e['layers']} | {e['search_seconds']:.0f} |")
    latency = [r for r in rows if r["method"] == "evolution-latency"]
    for r in latency:
        met = r["decode_speedup"] >= args.latency_speedup * 0.95
        lines += ["", f"Latency budget {args.latency_speedup}x (parameters <= {r['ratio']}): predicted "
                      f"{r['predicted_speedup']:.3f}x, measured {r['decode_speedup']:.3f}x "
                      f"({'meets' if met else 'misses'} the budget within 5%), decoder ratio {r['decoder_ratio']:.3f}, "
                      f"ppl {r['ppl']:.3f}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, args) -> None:
    series = {method: [(r["ratio"], r["ppl"]) for r in rows if r["method"] == method]
              for method in ("uniform", "evolution")}
    ppl_vs_ratio(path, series, rows[0]["dense_ppl"], f"search vs uniform init (reform: {args.reform})")


if __name__ == "__main__":
    main()
