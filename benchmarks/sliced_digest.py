"""Digest of the sliced weights every method makes on a seeded tiny checkpoint: proof that a refactor
changed no behaviour (run before and after; the two outputs must be identical).

    python -m benchmarks.sliced_digest > before.txt
    ... change the code ...
    python -m benchmarks.sliced_digest | diff before.txt -

Each line: method, reform, ratio and the sha256 of the sliced model's tensors (names, shapes, dtypes
and bytes, in name order). Runs search, reform and slice only (seconds per method on the CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

# (method, reform, ratio, method options): every method once, the reforms on one width method
CASES = (
    ("uniform", "none", 0.7, {}),
    ("uniform", "admm", 0.7, {}),
    ("uniform", "least-squares", 0.7, {}),
    ("uniform", "bias", 0.7, {}),
    ("evolution", "none", 0.7, {"generations": 2, "population": 6, "mutations": 3, "crossovers": 3, "parents": 3,
                                "fitness_windows": 2, "fitness_seqlen": 0, "mlp_multiple": 8, "tolerance": 0.1}),
    ("evolution", "admm", 0.7, {"generations": 2, "population": 6, "mutations": 3, "crossovers": 3, "parents": 3,
                                "fitness_windows": 2, "fitness_seqlen": 0, "mlp_multiple": 8, "tolerance": 0.1, "mlp_selection": "greedy", "allocated_seeds": True,
                                "final_choice": "reformed", "final_windows": 1, "skip_free_track": True}),
    ("goa", "none", 0.7, {}),
    ("magnitude", "none", 0.7, {}),
    ("wanda-sp", "none", 0.7, {}),
    ("flap", "none", 0.7, {}),
    ("shortgpt", "none", 0.7, {}),
    ("sleb", "none", 0.7, {}),
    ("streamline", "none", 0.7, {}),
    ("attn-skip-last", "none", 0.9, {}),
    ("attn-drop", "none", 0.9, {}),
)
CORPUS = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(400))


def tensor_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(file)
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods (default: all)")
    args = parser.parse_args()
    wanted = {m for m in args.methods.split(",") if m}

    from pipeline.recipe import build_recipe
    from pipeline.workflow import run_pipeline
    from tests.factories import tiny_checkpoint

    torch.set_num_threads(1)  # reductions in a fixed order
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_checkpoint(tmp / "model")
        corpus = tmp / "corpus.txt"
        corpus.write_text(CORPUS)
        for index, (method, reform, ratio, options) in enumerate(CASES):
            if wanted and method not in wanted:
                continue
            recipe = build_recipe(overrides={  # the fast preset adds nothing to a method and reform both given
                "preset": "fast", "model.source": str(model), "data.calibration": str(corpus), "data.evaluation": str(corpus),
                "data.calib_samples": 8, "data.calib_seqlen": 32, "search.method": method,
                "search.ratio": ratio, "search.options": options, "reform.method": reform,
                "output": str(tmp / f"artifacts{index}")})
            artifact = run_pipeline(recipe, stages=["search", "reform", "slice"], progress=False)
            print(f"{method:15s} {reform:14s} {ratio:.2f} {tensor_digest(artifact.path / 'slice' / 'model')}",
                  flush=True)


if __name__ == "__main__":
    main()
