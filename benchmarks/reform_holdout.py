"""Which architecture is better after the real reform, on calibration-split text the reform never saw?

    python -m benchmarks.reform_holdout ART/uniform-0.6/v0001/search/arch.json ART/evolution-0.6/v0001/search/arch.json

The search-vs-uniform benchmark ranks architectures by WikiText-2 *test* perplexity after ADMM reform,
on 8 x 2048 tokens. Margins of a few tenths of a percent there can be noise or the test text's own
quirks. This script asks the same question on the calibration split (WikiText-2 validation), never the
test text: each architecture is sliced, reformed like the reform stage (sequential ADMM, the paper's
rho and iterations) on the first calibration windows, and scored two ways:
  held-out windows   the last `--held-windows` of the `--calib-samples` x `--calib-seqlen` calibration
                     windows (the reform was fitted on the others)
  other windows      `--other-windows` x `--other-seqlen` windows of the same split drawn with seed + 1
Prints a Markdown table (about 100 s per architecture for SmolLM2 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


from benchmarks.calibration_args import add_calibration_arguments, load_calibration
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.search.final_choice import reformed_model
from pipeline.data import calibration_windows
from pipeline.models.spec import ArchSpec, decoder_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_calibration_arguments(parser)
    parser.add_argument("--held-windows", type=int, default=8, help="last calibration windows, not reformed on")
    parser.add_argument("--other-windows", type=int, default=8)
    parser.add_argument("--other-seqlen", type=int, default=2048)
    args = parser.parse_args()
    if not 0 < args.held_windows < args.calib_samples:
        parser.error("--held-windows must leave at least one calibration window to reform on")

    loaded, corpus, calibration = load_calibration(args)
    fit, held = calibration[: -args.held_windows], calibration[-args.held_windows:]
    other = calibration_windows(loaded.tokenizer, corpus, args.other_windows, args.other_seqlen, args.seed + 1)
    print(f"| architecture | decoder kept | held-out {held.shape[0]} x {held.shape[1]} | "
          f"other {other.shape[0]} x {other.shape[1]} | s |")
    print("|---|---|---|---|---|")
    for path in args.specs:
        began = time.perf_counter()
        spec = ArchSpec.from_json(Path(path).read_text())
        model = reformed_model(loaded.model, spec, fit)
        scores = [calibration_perplexity(model, windows) for windows in (held, other)]
        print(f"| {path} | {decoder_ratio(spec):.3f} | {scores[0]:.2f} | {scores[1]:.2f} | "
              f"{time.perf_counter() - began:.0f} |", flush=True)


if __name__ == "__main__":
    main()
