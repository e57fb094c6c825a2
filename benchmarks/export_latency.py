"""ONNX Runtime vs PyTorch on dense and sculpted SmolLM2: parity, perplexity, prefill latency, decode tokens/s.

Every model (the dense source and a uniform sculpt per --ratios) is exported with llm-sculpt's
exporter (fp32, opset 18, parity-checked against PyTorch on the CPU), then measured in this one
process, one model after another, so the ratios compare like with like:
  * perplexity on the evaluation corpus (WikiText-2 test) from ONNX Runtime and from PyTorch;
  * ONNX Runtime prefill latency and greedy decode tokens/s (CPU, or CUDA with --device cuda:
    needs onnxruntime-gpu; the KV cache stays on the GPU between steps);
  * the same timings from PyTorch on --device, for reference.
Absolute numbers depend on the machine; run it on a quiet one.

    python -m benchmarks.export_latency                          # CPU: ~15-20 min on 2 cores
    python -m benchmarks.export_latency --device cuda            # GPU (needs onnxruntime-gpu)
    python -m benchmarks.export_latency --layers 2 --repeats 2 --new-tokens 8 --prefill 64 --prompt 16 \\
        --eval-windows 1 --seq-len 128 --check-tokens 8          # a quick check of the script

Writes results.json and results.md to --out and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


from benchmarks.sculpted_variants import calibration, parameters, source_model, variants

from pipeline.measures import latency
from pipeline.measures.perplexity import perplexity
from pipeline.measures.runners import TorchRunner
from pipeline.stages.export import export_checked
from validators.ort_runner import OrtRunner


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="source model (default: SmolLM2-135M-Instruct), as --model "
                        "of `sculpt run`")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where ONNX Runtime and torch run")
    parser.add_argument("--ratios", default="0.8,0.5", help="sculpting ratios to compare with the dense model")
    parser.add_argument("--prefill", default="128,512", help="prompt lengths for prefill latency")
    parser.add_argument("--prompt", type=int, default=128, help="prompt length before decoding")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per timed run")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--eval-corpus", default="wikitext2")
    parser.add_argument("--eval-windows", type=int, default=2, help="perplexity windows (0 = the whole test split)")
    parser.add_argument("--seq-len", type=int, default=512, help="perplexity window length")
    parser.add_argument("--check-tokens", type=int, default=32, help="greedy tokens the exporter's check compares")
    parser.add_argument("--layers", type=int, default=None, help="use only the first N layers (quick runs)")
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2's shape with random weights "
                        "(perplexity then runs on random ids)")
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--corpus", default="pydoc", help="calibration corpus (pydoc needs no download)")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR, else the hub)")
    parser.add_argument("--out", default="bench-out/export_latency")
    return parser.parse_args()


def evaluation_tokens(tokenizer, vocab_size: int, args) -> torch.LongTensor:
    if tokenizer is None:
        windows = max(args.eval_windows, 1)
        return torch.randint(0, vocab_size, (windows * args.seq_len,), generator=torch.Generator().manual_seed(0))
    from pipeline.data import evaluation_ids, load_corpus

    return evaluation_ids(tokenizer, load_corpus(args.eval_corpus, "evaluation", args.data_dir), args.seq_len)


def measure(name: str, model, directory: Path, ids: torch.LongTensor, args) -> dict:
    """Export `model` (on the CPU), then parity, perplexity and timings of ONNX Runtime and torch on --device."""
    say = lambda message: print(message, file=sys.stderr)
    exported = export_checked(model, directory, check_tokens=args.check_tokens, say=say)
    runner = OrtRunner.from_export_dir(directory, threads=args.threads or None, device=args.device)
    torch_model = model.to(args.device)
    windows = args.eval_windows or None
    say(f"{name}: perplexity ({args.eval_corpus}, {args.eval_windows or 'all'} windows of {args.seq_len})")
    ppl_ort = perplexity(runner, ids, args.seq_len, windows, progress=False).ppl
    ppl_torch = perplexity(TorchRunner(torch_model), ids, args.seq_len, windows, progress=False).ppl
    say(f"{name}: timing on {args.device}")
    lengths = [int(n) for n in args.prefill.split(",")]
    row = {
        "decoder_ratio": None, "params": parameters(model), "onnx_bytes": exported["onnx_bytes"],
        "export_check": exported["parity"], "ppl_onnxruntime": ppl_ort, "ppl_torch": ppl_torch,
        "ppl_rel_diff": ppl_ort / ppl_torch - 1, "providers": runner.session.get_providers(),
        "ort_prefill": {n: runner.prefill_latency(n, args.batch, warmup=1, repeats=args.repeats).as_dict()
                        for n in lengths},
        "ort_decode": runner.decode_throughput(args.batch, args.prompt, args.new_tokens, warmup=1,
                                               repeats=args.repeats).as_dict(),
        "torch_prefill": {n: latency.prefill_latency(torch_model, n, args.batch, warmup=1,
                                                     repeats=args.repeats).as_dict() for n in lengths},
        "torch_decode": latency.decode_throughput(torch_model, args.batch, args.prompt, args.new_tokens, warmup=1,
                                                  repeats=args.repeats).as_dict(),
    }
    model.to("cpu")
    del runner
    return row


def main() -> None:
    args = arguments()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    model, tokenizer = source_model(args.random_weights, args.layers, model_ref=args.model)
    windows = calibration(model, tokenizer, args.calib_samples, args.calib_seqlen, args.corpus, args.data_dir)
    models = variants(model, tokenizer, [float(r) for r in args.ratios.split(",")], windows)
    ids = evaluation_tokens(tokenizer, model.config.vocab_size, args)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, variant in models.items():
            rows[name] = measure(name, variant.model, Path(scratch) / name, ids, args)
            rows[name]["decoder_ratio"] = variant.decoder_ratio
    lengths = [int(n) for n in args.prefill.split(",")]
    result = {"settings": vars(args), "seconds": round(time.perf_counter() - began, 1), "models": rows,
              "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__}}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(rows, lengths, args) + f"\n\nTook {result['seconds']:.0f} s."
    (out / "results.md").write_text(table + "\n")
    print(table)


def markdown(rows: dict, lengths: list[int], args) -> str:
    dense = rows["dense"]
    head = ["model", "decoder params kept", "ONNX MiB", "max abs Δlogits", "greedy tokens equal",
            "ppl torch", "ppl ORT", "Δppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        check = row["export_check"]
        delta = max(check["max_abs_logits"], check["max_abs_logits_decode"])
        lines.append("| " + " | ".join([
            name, f"{row['decoder_ratio']:.2f}", f"{row['onnx_bytes'] / 2**20:.0f}", f"{delta:.2e}",
            f"{check['greedy_match']}/{check['greedy_tokens']}", f"{row['ppl_torch']:.4f}",
            f"{row['ppl_onnxruntime']:.4f}", f"{100 * row['ppl_rel_diff']:+.4f}%"]) + " |")
    lines.append("")
    for backend, label in (("ort", f"ONNX Runtime ({rows['dense']['providers'][0]})"), ("torch", "PyTorch")):
        head = ["model"] + [f"prefill {n} (ms)" for n in lengths] + ["decode tok/s"] + [
            f"prefill {n} speed-up" for n in lengths] + ["decode speed-up"]
        lines += [f"{label}, {args.device}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base_decode = dense[f"{backend}_decode"]["tokens_per_s"]
        for name, row in rows.items():
            prefill = [row[f"{backend}_prefill"][n]["median_s"] for n in lengths]
            speedups = [dense[f"{backend}_prefill"][n]["median_s"] / s for n, s in zip(lengths, prefill)]
            decode = row[f"{backend}_decode"]["tokens_per_s"]
            cells = [name] + [f"{1000 * s:.1f}" for s in prefill] + [f"{decode:.1f}"]
            cells += [f"{s:.2f}x" for s in speedups] + [f"{decode / base_decode:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"fp32, batch {args.batch}; perplexity on {args.eval_corpus} ({args.eval_windows or 'all'} windows "
                 f"of {args.seq_len}); prefill = one prompt (ONNX Runtime scores every position, torch only the "
                 f"last); decode = {args.new_tokens} greedy tokens after a {args.prompt}-token prompt; medians of "
                 f"{args.repeats} runs. Compare speed-ups within a table, not absolute times across machines.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
