"""Does the reformed final choice's held-out score rank finalists as the test text does?

The quality preset's pick at a ratio (its best uniform seed by fitness, greedy channels) and FLAP's model (the
`flap_seed`), each reformed with ADMM, with and without a fitted output bias, on the first 24 of the calibration
windows; scored on the last 8 calibration windows (the final choice's old held-out set), on validation windows
of the evaluation length drawn with the next seed (what `final_seqlen` scores on) and on the first test windows.

    python -m benchmarks.final_choice_proxy --ratio 0.8 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--held-windows", type=int, default=6, help="validation windows at the evaluation length")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
    from pipeline.compress.reform.sequential_reform import ReformSettings, reform_sculpted, with_output_biases
    from pipeline.compress.registry import MethodContext
    from pipeline.compress.search.evolution import _importance
    from pipeline.compress.search.generations import EvolutionOptions, search_space
    from pipeline.compress.search.genome import genome_ratio, genome_spec
    from pipeline.compress.search.seeds import flap_genome, make_budget, seed_genomes
    from pipeline.data import calibration_windows, evaluation_ids, load_corpus
    from pipeline.measures.perplexity import perplexity
    from pipeline.measures.runners import TorchRunner
    from pipeline.models.adapters import adapter_for
    from pipeline.models.loading import load_model
    from pipeline.models.slicing import slice_model
    from pipeline.stages.method_store import FolderStore

    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = adapter_for(model.config)
    base = adapter.dims(model.config)
    corpus = load_corpus("wikitext2", "calibration")
    calibration = calibration_windows(tokenizer, corpus, args.calib_samples, args.calib_seqlen, 0)
    fit, held = calibration[:-8], calibration[-8:]
    long_held = calibration_windows(tokenizer, corpus, args.held_windows, args.seq_len, 1)
    test = evaluation_ids(tokenizer, load_corpus("wikitext2", "evaluation"), args.seq_len)
    with tempfile.TemporaryDirectory() as state:
        ctx = MethodContext(model=model, tokenizer=tokenizer, adapter=adapter, base=base, calibration=calibration,
                            progress=False, state=FolderStore(Path(state)))
        options = EvolutionOptions(mlp_selection="greedy", flap_seed=True)
        inputs = _importance(ctx, hashlib.sha256(calibration.numpy().tobytes()).hexdigest()[:24], None, "greedy",
                             True)
    space = search_space(base, inputs.importance, options)
    budget = make_budget(base, args.ratio, options, None)
    fitness = calibration[: options.fitness_windows, : options.fitness_seqlen]
    uniform = min(seed_genomes(base, inputs.importance, space, budget),
                  key=lambda g: calibration_perplexity(slice_model(model, genome_spec(g, base)), fitness))
    flap = flap_genome(base, inputs.flap_scores, budget, options.mlp_multiple)
    for name, genome in (("uniform seed", uniform), ("flap seed", flap)):
        for bias in (False, True):
            began = time.time()
            spec = with_output_biases(genome_spec(genome, base)) if bias else genome_spec(genome, base)
            sculpted = slice_model(model, spec)
            reform_sculpted(sculpted, model, spec, fit, ReformSettings("admm"), 1, progress=False)
            row = {"model": name, "bias": bias, "kept": round(genome_ratio(genome, base), 4),
                   "held_ppl": calibration_perplexity(sculpted, held),
                   "long_held_ppl": calibration_perplexity(sculpted, long_held),
                   "long_held_first_ppl": calibration_perplexity(sculpted, long_held[:, : args.calib_seqlen]),
                   "test_ppl": perplexity(TorchRunner(sculpted), test, args.seq_len, args.eval_windows).ppl,
                   "seconds": round(time.time() - began)}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
