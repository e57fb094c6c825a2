"""Sculpted and int4-quantized SmolLM2 on ONNX Runtime (CPU), side by side in one run.

Five models by default: dense fp32, dense int4, sculpted 0.8 fp32, sculpted 0.8 int4, sculpted 0.5 int4.
A sculpt at ratio r is what `sculpt run --ratio r --preset fast` makes (uniform widths + ADMM reform),
run through the pipeline's own search, reform and slice stages into --work (a second run with the
same settings resumes them). Every model is exported by the export stage's code: the fp32 graph is
checked against PyTorch, and an int4 model is that graph quantized by ONNX Runtime's MatMulNBits
quantizer with the recipe's defaults (export.quantization), as `--export-precision int4` does.

Per model: perplexity through ONNX Runtime on --eval-windows windows of the evaluation corpus
(WikiText-2 test), greedy agreement with the unquantized model in PyTorch (validate's quantized
gate measure, on validate's fixed prompts), ONNX size, peak memory (a fresh process: prefill of the
longest prompt, then a few decode steps), prefill latency and decode tokens/s at batch 1. Timings
are taken side by side, as validate takes them (`latency.interleave`): every round times every model
once, and each speed-up is the median of the per-round ratios to dense fp32 with its middle half.
On a shared machine compare the ratios of one run, not absolute times.

    OMP_NUM_THREADS=1 python -m benchmarks.quantized_decode --threads 1     # ~30 min on a loaded 2-core CPU
    python -m benchmarks.quantized_decode --variants dense:fp32,dense:int4 --eval-windows 1 --seq-len 256 \\
        --repeats 3 --new-tokens 16 --prefill 64                                # a quick check of the script

Writes results.json and results.md to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from exporters.onnx_io import GraphIO
from exporters.onnx_export import PRECISIONS, as_sculpted, export_copy
from exporters.quantize import QUANTIZED_PRECISIONS, WeightQuantization
from pipeline.data import evaluation_ids, load_corpus
from pipeline.measures.latency import interleave, summarise
from pipeline.measures.perplexity import perplexity
from pipeline.measures.runners import TorchRunner
from pipeline.measures.speedup import paired_speedup
from pipeline.recipe import QuantizationSection
from pipeline.stages.export import export_checked, quantize_checked
from validators.backends import ModelFiles
from validators.memory import measure_memory
from validators.ort_runner import OrtRunner
from validators.parity import compare_runners, prompt_ids

DEFAULT_VARIANTS = "dense:fp32,dense:int4,0.8:fp32,0.8:int4,0.5:int4"
MEMORY_DECODE_STEPS = 8


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="source model (default: SmolLM2-135M-Instruct), as --model "
                        "of `sculpt run`")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of MODEL:PRECISION, MODEL dense or "
                        "a ratio (a `--preset fast` sculpt), PRECISION fp32, int8 or int4; the first is the reference")
    parser.add_argument("--block-size", type=int, default=None, help="int4/int8 block size (default: the recipe's "
                        "export.quantization.block_size)")
    parser.add_argument("--accuracy-level", type=int, default=None, help="MatMulNBits accuracy level (default: the "
                        "recipe's export.quantization.accuracy_level)")
    parser.add_argument("--algorithm", default=None, help="default | hqq (default: the recipe's "
                        "export.quantization.algorithm)")
    parser.add_argument("--lm-head", default=None, help="int8 | same | fp32: how the output projection is stored "
                        "(default: the recipe's export.quantization.lm_head)")
    parser.add_argument("--prefill", default="128,512", help="prompt lengths whose prefill latency is timed")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens before the timed decode steps")
    parser.add_argument("--new-tokens", type=int, default=64, help="decode steps timed per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (every model once per round)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--eval-corpus", default="wikitext2")
    parser.add_argument("--eval-windows", type=int, default=8, help="perplexity windows (0 = the whole test split)")
    parser.add_argument("--seq-len", type=int, default=2048, help="perplexity window length")
    parser.add_argument("--agreement-tokens", type=int, default=16, help="greedy tokens per fixed prompt for the "
                        "greedy agreement (validate.parity_new_tokens)")
    parser.add_argument("--calib-corpus", default="wikitext2", help="calibration corpus of the sculpts")
    parser.add_argument("--calib-samples", type=int, default=None, help="calibration windows (default: the recipe's)")
    parser.add_argument("--calib-seqlen", type=int, default=None, help="tokens per calibration window (default: the "
                        "recipe's)")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR, else the hub)")
    parser.add_argument("--checkpoints", default="", help="comma list of RATIO=DIR: sculpted checkpoints to use "
                        "for those ratios instead of sculpting (e.g. ARTIFACT/slice/model of an earlier run)")
    parser.add_argument("--work", default="bench-out/quantized_decode/work", help="sculpt artifacts and ONNX files")
    parser.add_argument("--out", default="bench-out/quantized_decode")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sculpt(ratio: float, args) -> Path:
    """The slice of `sculpt run --ratio R --preset fast --stages search,reform,slice` (resumed when done before)."""
    from pipeline.recipe import build_recipe
    from pipeline.workflow import run_pipeline

    overrides = {"preset": "fast", "search.ratio": ratio, "output": str(Path(args.work) / f"sculpt-{ratio:g}"),
                 "data.calibration": args.calib_corpus, "data.evaluation": args.eval_corpus}
    if args.model:
        overrides["model.source"] = args.model
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    if args.calib_samples:
        overrides["data.calib_samples"] = args.calib_samples
    if args.calib_seqlen:
        overrides["data.calib_seqlen"] = args.calib_seqlen
    artifact = run_pipeline(build_recipe(None, overrides), ["search", "reform", "slice"], progress=False)
    return artifact.path / "slice" / "model"


def load(name: str, args):
    """(model, checkpoint directory) of `name`: dense (the source) or a ratio (its fast-preset sculpt)."""
    from transformers import AutoModelForCausalLM

    import pipeline  # noqa: F401  (registers the sculpted model class)
    from pipeline.models.loading import load_model

    if name == "dense":
        loaded = load_model(args.model)
        return loaded.model, loaded.checkpoint_dir
    given = dict(item.split("=", 1) for item in args.checkpoints.split(",") if item)
    checkpoint = Path(given[name]) if name in given else sculpt(float(name), args)
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval(), checkpoint


def quantization(precision: str, args) -> WeightQuantization:
    section = QuantizationSection()
    if args.block_size:
        section.block_size = args.block_size
    if args.accuracy_level is not None:
        section.accuracy_level = args.accuracy_level
    if args.algorithm:
        section.algorithm = args.algorithm
    if args.lm_head:
        section.lm_head = args.lm_head
    return WeightQuantization.from_section(precision, section)


def export(model, directory: Path, precisions: list[str], args) -> dict[str, dict]:
    """Export `model` once in fp32 (checked against PyTorch), then a quantized copy per int precision asked for:
    {precision: export metrics}."""
    fp32 = directory / "fp32"
    shutil.rmtree(directory, ignore_errors=True)
    metrics = {"fp32": export_checked(model, fp32, check_tokens=16, say=say)}
    reference = export_copy(as_sculpted(model), PRECISIONS["fp32"])
    for precision in precisions:
        if precision in QUANTIZED_PRECISIONS:
            target = directory / precision
            shutil.copytree(fp32, target)
            spec = quantization(precision, args)
            quantized = quantize_checked(reference, target, spec, GraphIO.load(fp32), None, 16, say)
            metrics[precision] = {"onnx_bytes": quantized["onnx_bytes_after"], "quantization": quantized}
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    variants = [tuple(item.split(":")) for item in args.variants.split(",")]
    wanted: dict[str, list[str]] = {}
    for name, precision in variants:
        wanted.setdefault(name, []).append(precision)
    from pipeline.models.loading import load_model

    tokenizer = load_model(args.model).tokenizer
    ids = evaluation_ids(tokenizer, load_corpus(args.eval_corpus, "evaluation", args.data_dir), args.seq_len)
    prompts = prompt_ids(tokenizer)
    rows, runners, references = {}, {}, {}
    for name, precisions in wanted.items():
        model, checkpoint = load(name, args)
        say(f"{name}: exporting {', '.join(precisions)}")
        exported = export(model, work / "onnx" / name, precisions, args)
        references[name] = TorchRunner(model)
        for precision in precisions:
            label = f"{name} {precision}"
            directory = work / "onnx" / name / precision
            runner = OrtRunner.from_export_dir(directory, threads=args.threads or None)
            say(f"{label}: perplexity, greedy agreement, peak memory")
            ppl = perplexity(runner, ids, args.seq_len, args.eval_windows or None, progress=False)
            parity = compare_runners(references[name], runner, prompts, args.agreement_tokens)
            memory = measure_memory("onnxruntime", ModelFiles(checkpoint=checkpoint, export=directory),
                                    batch=1, prompt_len=max(_lengths(args)), new_tokens=MEMORY_DECODE_STEPS)
            rows[label] = {"model": name, "precision": precision, "params": sum(p.numel() for p in model.parameters()),
                           "onnx_bytes": exported[precision]["onnx_bytes"], "ppl": ppl.ppl, "windows": ppl.windows,
                           "greedy_agreement": parity["greedy_agreement"], "greedy_match": parity["greedy_match"],
                           "peak_memory_bytes": memory.model_bytes,
                           "quantization": exported[precision].get("quantization")}
            runners[label] = runner
    say(f"timing {len(runners)} models side by side: {args.warmup} warm-up and {args.repeats} rounds")
    timings = side_by_side(runners, args)
    reference = next(iter(runners))
    for label, row in rows.items():
        row["prefill_s"] = {n: summarise(s).as_dict() for n, s in timings[label]["prefill"].items()}
        row["decode_step_s"] = summarise(timings[label]["decode"]).as_dict()
        row["decode_tokens_per_s"] = 1 / row["decode_step_s"]["median_s"]
        row["decode_speedup"] = paired_speedup(timings[reference]["decode"], timings[label]["decode"]).as_dict()
        row["prefill_speedup"] = {n: paired_speedup(timings[reference]["prefill"][n], s).as_dict()
                                  for n, s in timings[label]["prefill"].items()}
    result = {"settings": vars(args), "seconds": round(time.perf_counter() - began, 1), "reference": reference,
              "models": rows, "versions": {"torch": torch.__version__,
                                           "onnxruntime": __import__("onnxruntime").__version__}}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(rows, reference, args) + f"\n\nTook {result['seconds']:.0f} s."
    (out / "results.md").write_text(table + "\n")
    print(table)


def _lengths(args) -> list[int]:
    return [int(n) for n in args.prefill.split(",")]


def side_by_side(runners: dict[str, OrtRunner], args) -> dict[str, dict]:
    """Prefill per length and decode at batch 1, every model once per round ({label: {"prefill": {n: [s]},
    "decode": [s per step]}})."""
    samples = {label: {"prefill": {}, "decode": []} for label in runners}
    for length in _lengths(args):
        calls = [lambda r=r: r.prefill_latency(length, 1, warmup=0, repeats=1).median_s for r in runners.values()]
        for label, timed in zip(runners, interleave(calls, args.warmup, args.repeats)):
            samples[label]["prefill"][length] = timed
    calls = [lambda r=r: r.decode_throughput(1, args.prompt, args.new_tokens, warmup=0, repeats=1).step.median_s
             for r in runners.values()]
    for label, timed in zip(runners, interleave(calls, args.warmup, args.repeats)):
        samples[label]["decode"] = timed
    return samples


def markdown(rows: dict, reference: str, args) -> str:
    lengths = _lengths(args)
    base = rows[reference]
    head = ["model", "params", "ONNX MiB", "peak memory MiB", "ppl", "× ref ppl", "greedy agreement",
            *(f"prefill {n} ms" for n in lengths), "decode tok/s", "decode speed-up [middle half]",
            f"prefill {lengths[-1]} speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        decode, prefill = row["decode_speedup"], row["prefill_speedup"][lengths[-1]]
        lines.append("| " + " | ".join([
            label, f"{row['params'] / 1e6:.1f} M", f"{row['onnx_bytes'] / 2**20:.0f}",
            f"{row['peak_memory_bytes'] / 2**20:.0f}", f"{row['ppl']:.2f}", f"{row['ppl'] / base['ppl']:.2f}",
            f"{100 * row['greedy_agreement']:.0f} %",
            *(f"{1e3 * row['prefill_s'][n]['median_s']:.0f}" for n in lengths),
            f"{row['decode_tokens_per_s']:.1f}",
            f"{decode['median']:.2f}x [{decode['low']:.2f}-{decode['high']:.2f}]", f"{prefill['median']:.2f}x"]) + " |")
    spec = next((row["quantization"] for row in rows.values() if row["quantization"]), None)
    how = (f"int{spec['bits']}: ONNX Runtime MatMulNBits, block {spec['block_size']}, "
           f"{'symmetric' if spec['symmetric'] else 'asymmetric'}, {spec['algorithm']} algorithm, accuracy level "
           f"{spec['accuracy_level']}, {spec['matmuls_quantized']} MatMuls; output projection "
           f"{'int' + str(spec['lm_head_bits']) if spec['lm_head_bits'] else 'fp32'}"
           f"{' (untied from the embedding)' if spec['lm_head_untied_from_embedding'] else ''}; embedding fp32. "
           if spec else "")
    lines += ["", f"{how}Perplexity: ONNX Runtime on {base['windows']} windows of {args.seq_len} tokens of "
              f"{args.eval_corpus}; greedy agreement: share of the unquantized model's (PyTorch) greedy tokens the "
              f"model also predicts, {args.agreement_tokens} per fixed prompt; decode: {args.new_tokens} greedy "
              f"steps after a {args.prompt}-token prompt, batch 1; {args.repeats} interleaved rounds after "
              f"{args.warmup} warm-up, speed-ups relative to {reference} round by round; ONNX Runtime threads: "
              f"{args.threads or 'default'}."]
    goal = next((row for label, row in rows.items() if row["model"] == "0.8" and row["precision"] == "int4"), None)
    if goal is not None and base["precision"] == "fp32" and base["model"] == "dense":
        lines += ["", f"Goal (issue 23): sculpted 0.8 + int4 at >= 3x dense fp32 decode speed with perplexity within "
                      f"1.5x dense. Measured: {goal['decode_speedup']['median']:.2f}x decode speed, perplexity "
                      f"{goal['ppl'] / base['ppl']:.2f}x dense."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
