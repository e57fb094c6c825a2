"""Score finished artifacts' sculpted models (and the dense source) on a corpus's evaluation split.

For a model made once and measured again on more text: the whole WikiText-2 test split after an 8-window
screen, or other English text (`--corpus pydoc`, CPython's help topics, shipped with the package). Each
model is scored on the same windows as the dense source, which is scored first. Resumable: every finished
row is saved at once to --out and skipped on the next run with the same settings (--no-dense when the
source's number is known already).

    python -m benchmarks.artifact_perplexity bench-out/q08/v0001 --windows 0 --out bench-out/q08-whole.json \\
        --export-json docs/results/leaderboard.json     # the whole test split, merged into the board
    python -m benchmarks.artifact_perplexity bench-out/q08/v0001 --corpus pydoc --windows 0 \\
        --out bench-out/q08-pydoc.json                   # other English text

With --export-json (WikiText-2, 2048-token windows only) each artifact becomes a board record: its
ratio, method, reform and reform windows from its manifest, `default` when its search, reform and
calibration settings are what `sculpt run --ratio R` resolves to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("artifacts", nargs="+", help="artifact version directories (each with slice/model)")
    parser.add_argument("--out", required=True, help="results JSON (resumed when its settings match)")
    parser.add_argument("--corpus", default="wikitext2", help="evaluation corpus (its evaluation split)")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR)")
    parser.add_argument("--seq-len", type=int, default=2048, help="evaluation window length")
    parser.add_argument("--windows", type=int, default=0, help="the first N windows (0 = the whole split)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense source (on the whole split, 20-50 "
                                                                 "minutes on a CPU core): when it is measured already")
    parser.add_argument("--export-json", default=None, help="merge the rows into this machine-readable board")
    return parser.parse_args(argv)


def board_record(manifest, ppl: float, tokens: int, seq_len: int) -> dict:
    """The leaderboard record of an artifact scored on `tokens` WikiText-2 test tokens."""
    from benchmarks.leaderboard import reform_label
    from benchmarks.leaderboard_json import record
    from pipeline.recipe import Recipe, build_recipe

    recipe = _as_reformed(Recipe.model_validate(manifest.recipe), manifest.record("reform"))
    search = manifest.record("search")
    default = build_recipe(None, {"search.ratio": recipe.search.ratio})
    is_default = all(getattr(recipe, part) == getattr(default, part) for part in ("search", "reform")) and \
        (recipe.data.calib_samples, recipe.data.calib_seqlen, recipe.seed) == \
        (default.data.calib_samples, default.data.calib_seqlen, default.seed)
    return record(ratio=recipe.search.ratio, method=recipe.search.method, reform=reform_label(recipe),
                  reform_samples=recipe.reform_windows()[0], default=is_default,
                  decoder_ratio=search.metrics["decoder_ratio"], ppl=ppl, windows=tokens // (seq_len - 1))


def _as_reformed(recipe, reform):
    """`recipe` with the reform windows its reform stage recorded: a stage re-run with its own flags (`sculpt reform
    ART --reform-samples 512`) records them in the stage's options, and in versions made before 2026-12-08 the
    manifest's recipe kept the run's."""
    recorded = reform.options.get("calibration") if reform is not None and reform.status == "done" else None
    if not recorded:
        return recipe
    update = {key: recorded[key] for key, resolved in zip(("samples", "seqlen"), recipe.reform_windows())
              if recorded.get(key, resolved) != resolved}
    return recipe.model_copy(update={"reform": recipe.reform.model_copy(update=update)}) if update else recipe


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.artifacts import read_manifest
    from pipeline.data import evaluation_ids, load_corpus
    from pipeline.errors import SculptError
    from pipeline.measures.perplexity import perplexity
    from pipeline.measures.runners import TorchRunner
    from pipeline.models.loading import load_model
    from pipeline.paths import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"corpus": args.corpus, "seq_len": args.seq_len, "windows": args.windows}
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"settings": settings, "rows": {}}
    if results["settings"] != settings:
        print(f"error: {out} was measured with other settings {results['settings']}; pick another --out",
              file=sys.stderr)
        return 2
    try:
        manifests = {path: read_manifest(path) for path in args.artifacts}
        sources = {m.recipe["model"]["source"] for m in manifests.values()}
        if len(sources) != 1:
            raise SculptError(f"the artifacts come from different source models {sorted(sources)}; score them apart")
        loaded = load_model(sources.pop())
        ids = evaluation_ids(loaded.tokenizer, load_corpus(args.corpus, "evaluation", args.data_dir), args.seq_len)
    except SculptError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    windows = args.windows or None
    models = {**({} if args.no_dense else {"dense": lambda: loaded.model}),
              **{path: (lambda path=path: AutoModelForCausalLM.from_pretrained(Path(path) / "slice" / "model").eval())
                 for path in args.artifacts}}
    for name, build in models.items():
        if name in results["rows"]:
            continue
        print(f"> {name}", file=sys.stderr, flush=True)
        result = perplexity(TorchRunner(build()), ids, args.seq_len, windows)
        results["rows"][name] = {"ppl": result.ppl, "tokens": result.tokens}
        atomic_write_json(out, results, indent=1)
        print(f"  ppl {result.ppl:.3f} on {result.tokens} tokens", file=sys.stderr, flush=True)
    for name, row in results["rows"].items():
        print(f"| {name} | {row['ppl']:.2f} | {row['tokens']} |")
    if args.export_json:
        if args.corpus != "wikitext2" or args.seq_len != 2048:
            print("error: the board holds WikiText-2 test perplexities on 2048-token windows", file=sys.stderr)
            return 2
        from benchmarks.leaderboard_json import dense_record, merge_rows

        rows = [board_record(manifests[path], results["rows"][path]["ppl"], results["rows"][path]["tokens"],
                             args.seq_len) for path in args.artifacts]
        if "dense" in results["rows"]:
            dense = results["rows"]["dense"]
            rows.append(dense_record(dense["ppl"], windows=dense["tokens"] // (args.seq_len - 1)))
        merge_rows(Path(args.export_json), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
