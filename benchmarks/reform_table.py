"""Reform after uniform importance pruning: none / bias / least squares / ADMM, and ADMM vs sample count.

    python -m benchmarks.reform_table --device cuda --eval-windows 0          # the paper's settings, whole test split
    python -m benchmarks.reform_table --methods none,bias,least-squares,admm --reform-samples 32 \\
        --reform-seqlen 512 --sweep-samples 32,128,512 --eval-windows 8     # the README table (58 min, 2 CPU cores)
    python -m benchmarks.reform_table --ratios 0.8 --reform-samples 2 --reform-seqlen 256 \\
        --sweep-samples 1,2 --sweep-ratio 0.8 --eval-windows 1 --eval-seqlen 512   # a CPU smoke run

For every ratio the model is pruned once with `--method uniform` (calibrated split, search
calibration `--calib-samples` x `--calib-seqlen`), then each reform method is applied to a fresh
slice of that architecture from `--reform-samples` x `--reform-seqlen` windows (the paper: 128 x
2048), and the evaluation perplexity is measured (WikiText-2 test by default). At `--sweep-ratio`
ADMM is repeated with each of `--sweep-samples` windows (the paper's Fig. 6). Finished rows are
kept in OUT/rows.jsonl, so an interrupted run resumes; writes OUT/results.md, results.json and
ppl_vs_ratio.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from benchmarks.charts import ppl_vs_ratio
from pipeline.compress import get_method, parse_options
from pipeline.compress.reform.sequential_reform import ReformSettings, reform_sculpted, with_output_biases
from pipeline.compress.registry import MethodContext
from pipeline.data import calibration_windows, evaluation_ids, load_corpus
from pipeline.models.adapters import adapter_for
from pipeline.models.loading import load_model
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, decoder_ratio
from pipeline.measures.perplexity import perplexity
from pipeline.measures.runners import TorchRunner

METHODS = ("none", "bias", "least-squares", "admm")
LABELS = {"none": "no reform", "bias": "bias (FLAP)", "least-squares": "least squares", "admm": "ADMM"}


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench, began = Bench(args, out), time.perf_counter()
    rows = [bench.row("dense", 1.0, "none", 0)]
    for ratio in args.ratios:
        rows += [bench.row("uniform", ratio, method, args.reform_samples) for method in args.methods]
    rows += [bench.row("uniform", args.sweep_ratio, "admm", n) for n in args.sweep_samples]
    tables = markdown(rows, args)
    results = {"settings": vars(args), "rows": rows, "total_seconds": round(time.perf_counter() - began, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(tables)
    plot(rows, args, out / "ppl_vs_ratio.png")
    print("\n" + tables)
    print(f"written to {out}/ (results.md, results.json, ppl_vs_ratio.png); {results['total_seconds']:.0f} s this run")


def parse_args() -> argparse.Namespace:
    floats = lambda s: [float(x) for x in s.split(",")]
    ints = lambda s: [int(x) for x in s.split(",")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="source model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--ratios", type=floats, default=[0.9, 0.8, 0.7, 0.6, 0.5], help="comma-separated")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS),
                        help=f"comma-separated reform methods, of {','.join(METHODS)}")
    parser.add_argument("--reform-samples", type=int, default=128, help="reform calibration windows")
    parser.add_argument("--reform-seqlen", type=int, default=2048, help="tokens per reform window")
    parser.add_argument("--sweep-ratio", type=float, default=0.7, help="ratio of the ADMM sample-count sweep")
    parser.add_argument("--sweep-samples", type=ints, default=[32, 128, 512], help="ADMM windows to compare")
    parser.add_argument("--rho", type=float, default=1.0, help="ADMM penalty (reform.rho)")
    parser.add_argument("--iterations", type=int, default=30, help="ADMM iterations (reform.iterations)")
    parser.add_argument("--original-activations", action="store_true",
                        help="fit every layer on the original model's activations (reform.sequential false)")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR)")
    parser.add_argument("--calib-corpus", default="auto", help="calibration corpus (auto: WikiText-2 train)")
    parser.add_argument("--eval-corpus", default="auto", help="evaluation corpus (auto: WikiText-2 test)")
    parser.add_argument("--calib-samples", type=int, default=32, help="windows for the uniform search")
    parser.add_argument("--calib-seqlen", type=int, default=512, help="tokens per search window")
    parser.add_argument("--eval-windows", type=int, default=0, help="evaluation windows (0: the whole split)")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/reform_table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown reform method(s) {sorted(unknown)}; choose from {','.join(METHODS)}")
    return args


class Bench:
    """The loaded model and data, the searched specs per ratio, and the finished rows (resumable)."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        self.calibration_corpus = load_corpus(args.calib_corpus, "calibration", args.data_dir)
        corpus = load_corpus(args.eval_corpus, "evaluation", args.data_dir)
        self.eval_ids = evaluation_ids(self.loaded.tokenizer, corpus, args.eval_seqlen)
        self.eval_name = corpus.name
        self.rows_file = out / "rows.jsonl"
        lines = self.rows_file.read_text().splitlines() if self.rows_file.exists() else []
        self.done = {row["key"]: row for row in map(json.loads, lines)}
        self.specs: dict[float, ArchSpec] = {}

    def row(self, search: str, ratio: float, method: str, samples: int) -> dict:
        a, samples = self.args, 0 if method == "none" else samples
        key = json.dumps([a.model, a.dtype, search, ratio, method, samples, a.reform_seqlen, a.rho, a.iterations,
                          not a.original_activations, a.calib_corpus, a.calib_samples, a.calib_seqlen,
                          a.eval_corpus, a.eval_windows, a.eval_seqlen, a.seed])
        if key in self.done:
            return self.done[key]
        print(f"\n=== {search} {ratio}, reform {method}" + (f" ({samples} windows)" if method != "none" else ""),
              flush=True)
        spec = self.spec(ratio) if search == "uniform" else None
        model, reform = (self.loaded.model, {}) if spec is None else self.reformed(spec, method, samples)
        ppl = perplexity(TorchRunner(model), self.eval_ids, a.eval_seqlen, a.eval_windows or None, a.batch_size,
                         not a.quiet)
        row = {"key": key, "search": search, "ratio": ratio, "method": method, "samples": samples,
               "decoder_ratio": round(decoder_ratio(spec), 4) if spec else 1.0,
               "ppl": ppl.ppl, "eval_corpus": self.eval_name, "eval_tokens": ppl.tokens, **reform}
        print(f"--> ppl {row['ppl']:.3f}" + (f", reform {reform['reform_s']:.0f} s" if reform else ""), flush=True)
        with self.rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.done[key] = row
        return row

    def spec(self, ratio: float) -> ArchSpec:
        if ratio not in self.specs:
            a, loaded = self.args, self.loaded
            method = get_method("uniform")
            windows = calibration_windows(loaded.tokenizer, self.calibration_corpus, a.calib_samples,
                                          a.calib_seqlen, a.seed)
            adapter = adapter_for(loaded.model.config)
            ctx = MethodContext(loaded.model, loaded.tokenizer, adapter, adapter.dims(loaded.model.config), windows,
                                a.seed, not a.quiet, batch_size=a.batch_size)
            self.specs[ratio] = method.run(ctx, ratio, parse_options(method, {})).spec
        return self.specs[ratio]

    def reformed(self, spec: ArchSpec, method: str, samples: int):
        """A fresh slice of `spec`, reformed by `method` (on the model's device), and the reform's numbers."""
        a, dense = self.args, self.loaded.model
        if method == "bias":
            spec = with_output_biases(spec)
        model = slice_model(dense, spec).to(dense.device)
        if method == "none":
            return model, {}
        windows = calibration_windows(self.loaded.tokenizer, self.calibration_corpus, samples, a.reform_seqlen,
                                      a.seed)
        settings = ReformSettings(method, a.rho, a.iterations, not a.original_activations)
        outcome = reform_sculpted(model, dense, spec, windows, settings, a.batch_size, not a.quiet)
        errors = [(r.error_before, r.error_after) for r in outcome.reports]
        return model, {"reform_s": outcome.seconds["total"], "reform_seconds": outcome.seconds,
                       "error_before_mean": sum(e[0] for e in errors) / len(errors),
                       "error_after_mean": sum(e[1] for e in errors) / len(errors)}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    dense = next(r for r in rows if r["search"] == "dense")
    by = {(r["ratio"], r["method"], r["samples"]): r for r in rows if r["search"] == "uniform"}
    windows = f"{args.eval_windows or 'all'} windows of {args.eval_seqlen}"
    mode = "original-model activations" if args.original_activations else "sequential calibration"
    lines = [f"Evaluation perplexity ({dense['eval_corpus']}, {windows}; dense "
             f"{dense['ppl']:.3f}) after uniform importance pruning (calibrated split). Reform from "
             f"{args.reform_samples} x {args.reform_seqlen} {args.calib_corpus} windows, {mode}; ADMM rho "
             f"{args.rho}, {args.iterations} iterations; {args.device}, {args.dtype}.", "",
             "| ratio | decoder kept | " + " | ".join(LABELS[m] for m in args.methods) + " | ADMM reform s |",
             "|---|---|" + "---|" * len(args.methods) + "---|"]
    for ratio in args.ratios:
        cells = [by[(ratio, m, 0 if m == "none" else args.reform_samples)] for m in args.methods]
        admm = by.get((ratio, "admm", args.reform_samples))
        seconds = f"{admm['reform_s']:.0f}" if admm else "-"
        lines.append(f"| {ratio} | {cells[0]['decoder_ratio']:.3f} | " + " | ".join(f"{c['ppl']:.3f}" for c in cells)
                     + f" | {seconds} |")
    lines += ["", f"ADMM at ratio {args.sweep_ratio} by calibration windows (x {args.reform_seqlen} tokens):", "",
              "| windows | perplexity | mean output error before -> after | reform s |", "|---|---|---|---|"]
    for n in args.sweep_samples:
        r = by[(args.sweep_ratio, "admm", n)]
        lines.append(f"| {n} | {r['ppl']:.3f} | {r['error_before_mean']:.4f} -> {r['error_after_mean']:.4f} | "
                     f"{r['reform_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    series = {}
    for method in args.methods:
        samples = 0 if method == "none" else args.reform_samples
        series[LABELS[method]] = [(r["ratio"], r["ppl"]) for r in rows
                                  if r["search"] == "uniform" and r["method"] == method and r["samples"] == samples]
    ppl_vs_ratio(path, series, rows[0]["ppl"],
                 f"reform after uniform pruning ({args.reform_samples} x {args.reform_seqlen} windows)")


if __name__ == "__main__":
    main()
