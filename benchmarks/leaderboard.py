"""Leaderboard: every compression method on the same model, data and decoder-parameter ratios.

Each configuration x ratio runs the whole pipeline (`pipeline.workflow.run_pipeline`: search,
reform, slice, validate) on --device and is then measured: WikiText-2 test perplexity (the
validate stage; --eval-windows 0 = the whole test split), parameters and the achieved ratio,
prefill latency and decode tokens/s on --latency-device (default: the CPU backend) next to the
dense model timed just before it in the same process, and the wall time of the method (search +
reform stages). The configurations are every method registered in `pipeline.compress` (so
methods merged later appear by themselves) plus EXTRA_CONFIGURATIONS below. Writes results.json
(every number), leaderboard.md and two PNG charts (perplexity vs ratio; perplexity vs measured
speed) to --out, and prints the table.

Resumable: configurations already in results.json are not run again (failures are retried);
stop it at any time and run the same command again.

Fair comparison (issue "Best by default"): `--reforms none,admm,least-squares,bias` follows every method
with each reform stage (a method whose cut leaves no output projection with pruned inputs, e.g. a
depth method, gets its no-reform row copied: the reform stage has nothing to correct, so every reform
gives the same model), and `--presets quality,fast` adds the pipelines `sculpt run --preset NAME`
makes. `--export-json docs/results/leaderboard.json` merges the perplexities into the machine-readable
board.

    python -m benchmarks.leaderboard --device cuda                  # the full board (see docs/methods.md)
    python -m benchmarks.leaderboard --methods shortgpt --ratios 0.8 --eval-windows 2   # a quick check
    python -m benchmarks.leaderboard --reforms none,admm,least-squares,bias --presets quality --no-latency \
        --eval-windows 8 --out bench-out/screen --export-json docs/results/leaderboard.json   # the fair screen
"""

from __future__ import annotations

import sys
from pathlib import Path


# ---- what the board runs (data: edit here) --------------------------------------------------------
RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)
# Every registered method runs once with its default options, under its own name. These add more
# configurations: a name, the method, its search options, and recipe overrides (e.g. the reform
# stage). One whose method is not registered, or whose overrides this checkout's recipe rejects,
# is reported as skipped.
EXTRA_CONFIGURATIONS = (
    {"name": "streamline-linear", "method": "streamline", "options": {"replacement": "linear"},
     "overrides": {"preset": "fast", "reform.method": "none"}},
)
# ------------------------------------------------------------------------------------------------

import argparse  # noqa: E402
import copy  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

from benchmarks.comparison import PERPLEXITY_ONLY, STAGES  # noqa: E402
from benchmarks.leaderboard_report import is_final, load_results, render, save_results  # noqa: E402


def configurations(methods, reforms=("none",), presets=()) -> list[dict]:
    """Every registered method with each reform (`name + reform`), the extra configurations, and the presets.
    A method's row runs under the `fast` preset with its own method and the row's reform, so rows differ only
    in what they name."""
    registered = [{"name": name if reform == "none" else f"{name} + {reform}", "method": name,
                   "overrides": {"preset": "fast", **reform_overrides(reform)}, "reform": reform}
                  for name in sorted(methods) for reform in reforms]
    extras = [dict(extra) for extra in EXTRA_CONFIGURATIONS]
    return registered + extras + [{"name": f"preset {p}", "method": None, "preset": p, "overrides": {"preset": p}}
                                  for p in presets]


def reform_overrides(reform: str) -> dict:
    """The recipe keys of a reform name: a reform method, `+bias` adding the fitted output bias (admm+bias)."""
    method, plus, extra = reform.partition("+")
    if plus and extra != "bias":
        raise SystemExit(f"unknown reform {reform!r}: a reform method, optionally followed by +bias")
    return {"reform.method": method, **({"reform.bias": True} if plus else {})}


def default_reform_samples() -> int | None:
    """The reform calibration windows of the default pipeline (`sculpt run` with no options), if it sets them."""
    from pipeline.presets import DEFAULT_PRESET, get_preset

    return get_preset(DEFAULT_PRESET).settings.get("reform.samples")


def reform_label(recipe) -> str:
    """The reform a run resolved to, named as --reforms names it."""
    return recipe.reform.method + ("+bias" if recipe.reform.bias and recipe.reform.method != "none" else "")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="bench-out/leaderboard", help="output directory (results.json, tables, charts)")
    parser.add_argument("--model", default="default", help="source model (recipe model.source)")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR)")
    parser.add_argument("--eval-corpus", default="wikitext2", help="evaluation corpus (its evaluation split)")
    parser.add_argument("--calib-corpus", default="wikitext2", help="calibration corpus (its calibration split)")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="decoder-parameter ratios")
    parser.add_argument("--methods", default=None,
                        help="comma-separated configuration or method names (a method selects all its "
                             "configurations; default: all, see --list)")
    parser.add_argument("--device", default="cpu", help="torch device the methods and perplexity run on: cpu, cuda")
    parser.add_argument("--latency-device", default="cpu",
                        help="torch device of the latency measurements (the issue asks for the CPU backend)")
    parser.add_argument("--seq-len", type=int, default=2048, help="evaluation window length")
    parser.add_argument("--eval-windows", type=int, default=0,
                        help="evaluation windows: the first N of the test text (0 = all; WikiText-2 has 148 of 2048, "
                             "~25 min per model on 2 CPU cores: pass a few on CPU)")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration window")
    parser.add_argument("--reform-samples", type=int, default=default_reform_samples(),
                        help="calibration windows of every method row's reform stage: the default pipeline's, so a "
                             "baseline gets the same reform as the default (a preset row keeps its preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefill-len", type=int, default=512, help="prompt tokens timed for prefill latency")
    parser.add_argument("--decode-prompt", type=int, default=64, help="prompt before the timed decode steps")
    parser.add_argument("--decode-tokens", type=int, default=32, help="decode steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keep-artifacts", action="store_true", help="keep each run's artifact (sliced model)")
    parser.add_argument("--reforms", default="none", help="comma list: follow every method with each reform stage "
                                                         "(none, admm, least-squares, bias; admm+bias and "
                                                         "least-squares+bias also fit an output bias)")
    parser.add_argument("--presets", default="", help="comma list of presets to add as configurations (quality, fast)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurements (a perplexity "
                                                                   "screen)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense model's row (on the whole split, "
                                                                 "20 minutes on a CPU core): for runs side by side, "
                                                                 "one of which measures it")
    parser.add_argument("--export-json", default=None, help="merge the perplexities into this machine-readable "
                                                            "board (e.g. docs/results/leaderboard.json)")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    return parser.parse_args(argv)


def settings_of(args) -> dict:
    """What the numbers depend on; a results.json measured with other settings is not resumed."""
    return {"model": args.model, "evaluation": args.eval_corpus, "seq_len": args.seq_len,
            "eval_windows": args.eval_windows,
            "calibration": args.calib_corpus, "calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen,
            "reform_samples": args.reform_samples,
            "seed": args.seed, "prefill_len": args.prefill_len, "decode_prompt": args.decode_prompt,
            "decode_tokens": args.decode_tokens, "repeats": args.repeats, "device": args.device,
            "latency_device": args.latency_device, "latency": not args.no_latency}


def recipe_for(args, config: dict, ratio: float, root: Path):
    from pipeline.recipe import build_recipe

    overrides = {"model.source": args.model, "model.device": args.device, "output": str(root), "seed": args.seed,
                 "data.calibration": args.calib_corpus, "data.evaluation": args.eval_corpus,
                 "data.calib_samples": args.calib_samples, "data.calib_seqlen": args.calib_seqlen,
                 "validate.seq_len": args.seq_len, "validate.max_windows": args.eval_windows or None,
                 "validate.compare_source": False, **PERPLEXITY_ONLY, "search.ratio": ratio,
                 **({"reform.samples": args.reform_samples} if config["method"] is not None and args.reform_samples
                    else {}),
                 **config.get("overrides", {})}
    if config["method"] is not None:  # a preset's row takes the method and options from the preset
        overrides.update({"search.method": config["method"], "search.options": config.get("options", {})})
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    return build_recipe(None, overrides, where=f"configuration {config['name']!r}")


def timings(model, args) -> dict:
    from pipeline.measures.latency import decode_throughput, prefill_latency

    prefill = prefill_latency(model, args.prefill_len, repeats=args.repeats)
    decode = decode_throughput(model, prompt_len=args.decode_prompt, new_tokens=args.decode_tokens,
                               repeats=args.repeats)
    return {"prefill_s": prefill.median_s, "prefill": prefill.as_dict(), "decode_tokens_per_s": decode.tokens_per_s,
            "decode": decode.as_dict()}


def measure_latency(model_dir: Path, dense, args) -> dict:
    """The sculpted model's timings next to the dense model's (`dense` on the latency device), measured
    just before, in this process."""
    from transformers import AutoModelForCausalLM

    sculpted = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dense.dtype).to(args.latency_device).eval()
    reference, measured = timings(dense, args), timings(sculpted, args)
    return {**measured, "dense": reference,
            "prefill_speedup": reference["prefill_s"] / measured["prefill_s"],
            "decode_speedup": measured["decode_tokens_per_s"] / reference["decode_tokens_per_s"]}


def run_entry(args, config: dict, ratio: float, timed_dense, out: Path) -> dict:
    from pipeline.artifacts import read_manifest
    from pipeline.compress import METHODS
    from pipeline.errors import SculptError
    from pipeline.workflow import run_pipeline

    if config["method"] is not None and config["method"] not in METHODS:
        return {"status": "skipped", "reason": f"method {config['method']!r} is not registered in this checkout"}
    root = artifact_root(out, config, ratio)
    try:
        recipe = recipe_for(args, config, ratio, root)
    except SculptError as err:
        return {"status": "skipped", "reason": str(err)}
    try:
        artifact = run_pipeline(recipe, STAGES, progress=True)
    except SculptError as err:
        return {"status": "n/a", "reason": str(err)}
    stages = {s.name: s for s in read_manifest(artifact.path).stages}
    search, validate = stages["search"], stages["validate"]
    reform = stages.get("reform")
    entry = {"status": "done", "ppl": validate.metrics["ppl"], "eval_tokens": validate.metrics["eval_tokens"],
             "params": validate.metrics["params"], "decoder_params": search.metrics["decoder_params"],
             "achieved_ratio": search.metrics["decoder_ratio"], "search_wall_s": search.wall_s,
             "reform_wall_s": reform.wall_s if reform is not None else 0.0, "slice_wall_s": stages["slice"].wall_s,
             "reform": reform.status if reform is not None else None,
             "layers": search.metrics.get("layers"), "removed_layers": search.metrics.get("removed_layers"),
             "reformable": reformable(artifact.path / "search" / "arch.json")}
    entry["method_wall_s"] = entry["search_wall_s"] + entry["reform_wall_s"]
    entry["resolved"] = {"method": recipe.search.method, "options": recipe.search.options,
                         "reform": reform_label(recipe), "preset": recipe.preset,
                         "reform_samples": recipe.reform_windows()[0]}
    if not args.no_latency:
        entry["latency"] = measure_latency(artifact.path / "slice" / "model", timed_dense, args)
    return entry


def reformable(arch_json: Path) -> bool:
    """Whether any kept output projection of the architecture lost input units (what a reform corrects)."""
    from pipeline.compress.reform.sequential_reform import pruned_inputs
    from pipeline.models.spec import ArchSpec

    spec = ArchSpec.from_json(arch_json.read_text())
    return any(pruned_inputs(layer, spec) for layer in spec.layers)


def same_as_none(results: dict, config: dict, ratio: float) -> dict | None:
    """For `method + reform`, the method's no-reform entry when its reform stage had nothing to correct there:
    every reform then gives the same model, so the row is copied rather than run again."""
    if config.get("reform", "none") == "none":
        return None
    plain = results["entries"].get(f"{config['method']}@{ratio:g}")
    if plain is None or plain.get("status") != "done" or plain.get("reformable", True):
        return None
    return {**plain, "copied_from": f"{config['method']}@{ratio:g}"}


def artifact_root(out: Path, config: dict, ratio: float) -> Path:
    return out / "artifacts" / slug(config["name"]) / f"r{ratio:g}"


def drop_artifacts(root: Path) -> None:
    """Remove a measured run's artifacts (a sliced model per run adds up to gigabytes) and emptied parents."""
    shutil.rmtree(root, ignore_errors=True)
    for parent in (root.parent, root.parent.parent):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def dense_entry(args, dense, timed_dense, tokenizer) -> dict:
    from pipeline.data import evaluation_ids, load_corpus
    from pipeline.measures.perplexity import perplexity
    from pipeline.measures.runners import TorchRunner

    ids = evaluation_ids(tokenizer, load_corpus(args.eval_corpus, "evaluation", args.data_dir), args.seq_len)
    result = perplexity(TorchRunner(dense), ids, args.seq_len, args.eval_windows or None)
    params = sum(p.numel() for p in dense.parameters())
    return {"status": "done", "ppl": result.ppl, "eval_tokens": result.tokens, "params": params,
            "achieved_ratio": 1.0, "method_wall_s": 0.0,
            **({} if args.no_latency else {"latency": {**timings(timed_dense, args), "prefill_speedup": 1.0,
                                                       "decode_speedup": 1.0}})}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline.compress import METHODS
    from pipeline.errors import SculptError
    from pipeline.models.loading import load_model

    configs = configurations(METHODS, [r for r in args.reforms.split(",") if r],
                             [p for p in args.presets.split(",") if p])
    if args.list:
        for config in configs:
            state = "" if config["method"] in METHODS or config.get("preset") else "  (not registered: skipped)"
            print(f"{config['name']}: method {config['method']}, options {config.get('options', {})}, "
                  f"overrides {config.get('overrides', {})}{state}")
        return 0
    if args.methods:
        wanted = {c.strip() for c in args.methods.split(",")}
        unknown = sorted(wanted - {c["name"] for c in configs} - {c["method"] for c in configs}
                         - {c.get("preset") for c in configs})
        if unknown:
            print(f"error: unknown configuration(s) or method(s) {unknown}; see --list", file=sys.stderr)
            return 2
        configs = [c for c in configs if c["name"] in wanted or c["method"] in wanted or
                   c.get("preset") in wanted]
    ratios = [float(r) for r in args.ratios.split(",")]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = load_results(out, settings_of(args))
    except SculptError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    loaded = load_model(args.model, device=args.device)
    dense = loaded.model
    # The dense model timed next to every sculpted one lives on the latency device.
    timed_dense = dense if torch.device(args.device) == torch.device(args.latency_device) else \
        copy.deepcopy(dense).to(args.latency_device)
    if "dense" not in results["entries"] and not args.no_dense:
        print("> dense: perplexity and latency", file=sys.stderr)
        results["entries"]["dense"] = {"config": "dense", "ratio": 1.0,
                                       **dense_entry(args, dense, timed_dense, loaded.tokenizer)}
        save_results(out, results)
    todo = [(c, r) for r in ratios for c in configs]  # ratio by ratio: a stopped screen has whole ratios
    for number, (config, ratio) in enumerate(todo, 1):
        key = f"{config['name']}@{ratio:g}"
        if is_final(results["entries"].get(key)):
            continue
        print(f"> [{number}/{len(todo)}] {key}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            entry = same_as_none(results, config, ratio) or run_entry(args, config, ratio, timed_dense, out)
        except Exception as err:  # one broken configuration must not stop hours of measurements
            traceback.print_exc()
            entry = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        entry.update(config=config["name"], method=config["method"], ratio=ratio,
                     options=config.get("options", {}), overrides=config.get("overrides", {}),
                     entry_wall_s=time.perf_counter() - began)
        results["entries"][key] = entry
        save_results(out, results)
        if is_final(entry) and not args.keep_artifacts:
            drop_artifacts(artifact_root(out, config, ratio))
        phases = "" if "search_wall_s" not in entry else \
            f"; search {entry['search_wall_s']:.0f} s, reform {entry['reform_wall_s']:.0f} s, " \
            f"slice {entry['slice_wall_s']:.0f} s"
        print(f"  {entry['status']}" + (f": {entry['reason']}" if "reason" in entry else
                                         f": ppl {entry['ppl']:.3f}{phases}") + f" ({entry['entry_wall_s']:.0f} s)",
              file=sys.stderr, flush=True)
    if args.export_json:
        from benchmarks.leaderboard_json import merge_into

        merge_into(Path(args.export_json), results)
    if not args.no_latency:
        print(render(out, results, [c["name"] for c in configs], ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
