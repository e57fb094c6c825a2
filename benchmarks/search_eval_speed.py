"""How fast can the evolutionary search score a candidate? Per-candidate seconds of each way.

    python -m benchmarks.search_eval_speed --ratio 0.8 --candidates 8

On the default model (SmolLM2-135M) and the evolution method's default fitness windows, it
scores the same mutated candidates (children of the uniform importance init at --ratio, made
with the search's own operators) four ways:
  masked   zero the cut weights of a dense copy, run the dense model (the reference semantics)
  sliced   slice_model() per candidate, then calibration_perplexity (the uniform method's path)
  scorer   CandidateScorer: slice layer by layer, all windows in one batch, float32 loss
  +prefix  the same with the prefix cache (children reuse their parent's leading layers)
and prints a Markdown table (also written to --out/eval_speed.md with a JSON copy).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


import numpy as np
import torch

from pipeline.compress.search.candidate_scorer import CandidateScorer
from pipeline.compress.search.generations import EvolutionOptions, search_space
from pipeline.compress.search.genome import Rates, genome_spec, mutate, repair
from pipeline.compress.search.evolution import fitness_windows
from pipeline.compress.search.seeds import make_budget, seed_genomes
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.importance.obs_importance import layer_importance
from pipeline.data import calibration_windows, load_corpus
from pipeline.models.adapters import adapter_for
from pipeline.models.loading import load_model
from pipeline.models.slicing import mask_weights, slice_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--candidates", type=int, default=8, help="children scored by each way")
    parser.add_argument("--calib-corpus", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--calib-samples", type=int, default=32, help="importance windows (the recipe default)")
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--fitness-windows", type=int, default=EvolutionOptions().fitness_windows)
    parser.add_argument("--fitness-seqlen", type=int, default=EvolutionOptions().fitness_seqlen)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench-out/search_eval_speed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, device=args.device)
    model, adapter = loaded.model, adapter_for(loaded.model.config)
    base = adapter.dims(model.config)
    corpus = load_corpus(args.calib_corpus, "calibration", args.data_dir)
    calibration = calibration_windows(loaded.tokenizer, corpus, args.calib_samples, args.calib_seqlen, seed=0)
    options = EvolutionOptions(fitness_windows=args.fitness_windows, fitness_seqlen=args.fitness_seqlen)
    windows = fitness_windows(calibration, options)
    importance = layer_importance(model, adapter, calibration, progress=False)
    space = search_space(base, importance, options)
    budget = make_budget(base, args.ratio, options, None)
    rng = np.random.default_rng(0)
    parent = repair(seed_genomes(base, importance, space, budget)[-1], space, budget, rng)  # all heads kept
    mild = Rates(options.mask_rate, options.ratio_rate, options.depth_rate)
    children = []
    while len(children) < args.candidates:
        child = repair(mutate(parent, space, mild, rng), space, budget, rng)
        if child is not None:
            children.append(genome_spec(child, base))
    parent_spec = genome_spec(parent, base)

    def dense_forward() -> float:
        began = time.perf_counter()
        calibration_perplexity(model, windows, batch_size=len(windows))
        return time.perf_counter() - began

    masked_model = copy.deepcopy(model)
    original = {k: v.clone() for k, v in masked_model.state_dict().items()}

    def masked(spec) -> float:
        masked_model.load_state_dict(original)
        return calibration_perplexity(mask_weights(masked_model, spec), windows, batch_size=len(windows))

    def sliced(spec) -> float:
        return calibration_perplexity(slice_model(model, spec), windows, batch_size=len(windows))

    plain = CandidateScorer(model, windows, cache_bytes=0)
    cached = CandidateScorer(model, windows, cache_bytes=options.cache_mb * 2**20)
    cached.perplexity(parent_spec)  # the parent was scored in the previous generation
    cached.stats.__init__()
    ways = {"masked": masked, "sliced": sliced, "scorer": plain.perplexity, "scorer + prefix cache": cached.perplexity}
    rows, values = {}, {}
    reference = dense_forward()
    for name, score in ways.items():
        began = time.perf_counter()
        values[name] = [score(spec) for spec in children]
        rows[name] = (time.perf_counter() - began) / len(children)
    reference = (reference + dense_forward()) / 2
    spread = max(abs(a - b) / b for name in ways for a, b in zip(values[name], values["sliced"]))
    tokens = windows.numel()
    lines = [f"Per-candidate scoring time, {args.candidates} children of the uniform init at ratio {args.ratio}, "
             f"fitness {windows.shape[0]} x {windows.shape[1]} tokens, {torch.get_num_threads()} thread(s); "
             f"dense forward of the same tokens: {reference:.2f} s.", "",
             "| way | s / candidate | vs dense forward |", "|---|---:|---:|"]
    lines += [f"| {name} | {sec:.2f} | {sec / reference:.2f} |" for name, sec in rows.items()]
    lines += ["", f"prefix cache: {100 * cached.stats.as_dict()['prefix_reuse']:.0f} % of the layers reused; "
              f"largest relative difference between ways: {spread:.1e}; {tokens} tokens per candidate."]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_speed.md").write_text(table + "\n")
    (out / "eval_speed.json").write_text(json.dumps({"seconds_per_candidate": rows, "dense_forward_s": reference,
                                                     "prefix_reuse": cached.stats.as_dict()["prefix_reuse"],
                                                     "threads": torch.get_num_threads(), "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
