"""Does the reform-aware fitness rank architectures the way held-out text does?

    python benchmarks/fitness_holdout.py ART/uniform-0.8/v0001/search/arch.json ART/evolution-0.8/v0001/search/arch.json

Each architecture (an `arch.json` from a search stage) is scored like the evolution search scores a
candidate (calibration perplexity on the first 4 x 256 tokens of the 32 x 512 calibration windows), four ways:
  plain             no correction
  in-sample         least-squares corrected o_proj/down_proj, fitted on all calibration tokens
                    (the fitness windows included)
  held-out moments  the same, fitted without the fitness windows (what the search does)
  held-out text     the in-sample correction, scored on 8 x 256 windows drawn with another seed
Prints a Markdown table. A fitness that ranks architectures unlike held-out text misleads the search.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.calibration_args import add_calibration_arguments, load_calibration  # noqa: E402
from pipeline.compress.search.candidate_scorer import CandidateScorer  # noqa: E402
from pipeline.compress.search.generations import EvolutionOptions  # noqa: E402
from pipeline.compress.search.fitness_refit import ProjectionRefit, held_out_moments, projection_grams  # noqa: E402
from pipeline.compress.importance.obs_importance import layer_importance  # noqa: E402
from pipeline.compress.reform.sequential_reform import PROJECTIONS  # noqa: E402
from pipeline.data import calibration_windows  # noqa: E402
from pipeline.models.adapters import adapter_for  # noqa: E402
from pipeline.models.spec import ArchSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_calibration_arguments(parser)
    parser.add_argument("--held-windows", type=int, default=8, help="held-out text windows (another seed)")
    args = parser.parse_args()
    defaults = EvolutionOptions()

    loaded, corpus, calibration = load_calibration(args)
    model, adapter = loaded.model, adapter_for(loaded.model.config)
    held_text = calibration_windows(loaded.tokenizer, corpus, args.held_windows, defaults.fitness_seqlen,
                                    args.seed + 1)
    fitness = calibration[: defaults.fitness_windows, : defaults.fitness_seqlen]

    totals = []
    layer_importance(model, adapter, calibration,
                     on_layer=lambda _i, g, _s: totals.append({m: g[m] for m in PROJECTIONS}))
    in_sample = ProjectionRefit(model, adapter, [{m: g.mean() for m, g in layer.items()} for layer in totals])
    held_out = ProjectionRefit(model, adapter, [held_out_moments(t, f) for t, f in
                                                zip(totals, projection_grams(model, adapter, fitness))])
    scorers = {"plain": CandidateScorer(model, fitness), "in-sample": CandidateScorer(model, fitness, refit=in_sample),
               "held-out moments": CandidateScorer(model, fitness, refit=held_out),
               "held-out text": CandidateScorer(model, held_text, refit=in_sample)}
    print("| architecture | " + " | ".join(scorers) + " |")
    print("|---" * (len(scorers) + 1) + "|")
    for path in args.specs:
        spec = ArchSpec.from_json(Path(path).read_text())
        scores = [f"{scorer.perplexity(spec):.2f}" for scorer in scorers.values()]
        print(f"| {path} | " + " | ".join(scores) + " |", flush=True)


if __name__ == "__main__":
    main()
