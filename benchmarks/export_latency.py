"""ONNX Runtime CPU latency of dense vs sculpted SmolLM2: prefill latency and decode tokens/s, as ratios.

Every model is exported with llm-sculpt's exporter (fp32, opset 18, parity-checked) and timed
in this one process, one after another, so the ratios compare like with like. Absolute
numbers depend on the machine; run it on a quiet one.

    python benchmarks/export_latency.py                       # SmolLM2-135M, ratios 0.8 and 0.5
    python benchmarks/export_latency.py --layers 2 --repeats 2 --new-tokens 8   # a quick check

Takes about 10-15 minutes on 2 CPU cores (three ~100 s exports, then the timings).
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sculpted_variants import calibration, parameters, source_model, variants  # noqa: E402

from exporters.checked_export import export_checked  # noqa: E402
from validators.ort_runner import OrtRunner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default="0.8,0.5", help="sculpting ratios to compare with the dense model")
    parser.add_argument("--prefill", default="128,512", help="prompt lengths for prefill latency")
    parser.add_argument("--prompt", type=int, default=128, help="prompt length before decoding")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per timed run")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--layers", type=int, default=None, help="use only the first N layers (quick runs)")
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2's shape with random weights")
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--corpus", default="pydoc", help="calibration corpus (pydoc needs no download)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="bench-out/export_latency")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    model, tokenizer = source_model(args.random_weights, args.layers)
    windows = calibration(model, tokenizer, args.calib_samples, args.calib_seqlen, args.corpus, args.data_dir)
    models = variants(model, tokenizer, [float(r) for r in args.ratios.split(",")], windows)
    prefill_lengths = [int(n) for n in args.prefill.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, variant in models.items():
            directory = Path(scratch) / name
            metrics = export_checked(variant.model, directory, say=lambda m: print(m, file=sys.stderr))
            runner = OrtRunner.from_export_dir(directory, threads=args.threads or None)
            print(f"timing {name}", file=sys.stderr)
            rows[name] = {
                "decoder_ratio": variant.decoder_ratio, "params": parameters(variant.model),
                "onnx_bytes": metrics["onnx_bytes"], "max_abs_logits": metrics["parity"]["max_abs_logits"],
                "prefill": {n: runner.prefill_latency(n, args.batch, warmup=1, repeats=args.repeats).as_dict()
                            for n in prefill_lengths},
                "decode": runner.decode_throughput(args.batch, args.prompt, args.new_tokens, warmup=1,
                                                   repeats=args.repeats).as_dict(),
            }
    result = {"settings": vars(args), "seconds": round(time.perf_counter() - began, 1), "models": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(rows, prefill_lengths, args)
    (out / "results.md").write_text(table + "\n")
    print(table)


def markdown(rows: dict, prefill_lengths: list[int], args) -> str:
    dense = rows["dense"]
    head = ["model", "decoder params kept", "ONNX MiB"] + [f"prefill {n} (ms)" for n in prefill_lengths] + [
        "decode tok/s"] + [f"prefill {n} speed-up" for n in prefill_lengths] + ["decode speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        prefill = [row["prefill"][n]["median_s"] for n in prefill_lengths]
        speedups = [dense["prefill"][n]["median_s"] / row["prefill"][n]["median_s"] for n in prefill_lengths]
        decode = row["decode"]["tokens_per_s"]
        cells = [name, f"{row['decoder_ratio']:.2f}", f"{row['onnx_bytes'] / 2**20:.0f}"]
        cells += [f"{1000 * s:.1f}" for s in prefill] + [f"{decode:.1f}"]
        cells += [f"{s:.2f}x" for s in speedups] + [f"{decode / dense['decode']['tokens_per_s']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nONNX Runtime CPU, fp32, batch {args.batch}; prefill = one prompt through the graph (all "
                 f"positions scored); decode = {args.new_tokens} greedy tokens after a {args.prompt}-token prompt; "
                 f"medians of {args.repeats} runs.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
