"""Sculpt a 7B-shaped model inside one machine's memory: wall time and peak RSS per stage, time per layer.

    OMP_NUM_THREADS=2 python -m benchmarks.scale_7b --dir /tmp/scale7b            # Qwen2-7B's shape, 28 layers
    python -m benchmarks.scale_7b --dir /tmp/scale7b --layers 4                   # its layers, fewer of them

1. Writes a safetensors checkpoint with Qwen2-7B's configuration (hidden 3584, 28 query / 4 KV heads of 128,
   MLP 18944, vocab 152064, untied embeddings, bf16) and seeded random weights (std 0.02 as the model's own
   init; norms 1, biases 0), one shard per decoder layer, never the whole model in memory (skipped when the
   checkpoint is already there). Its tokenizer is the default model's (SmolLM2's, ids < 49152): the weights are
   random, so perplexity means nothing here; memory and time are real.
2. Runs `sculpt run --stages search`, then `sculpt reform` and `sculpt slice` on that artifact, each in its own
   process, with the recipe below (uniform importance-initialised widths, proportional split, least-squares
   reform at --ratio, --calib-samples x --calib-seqlen calibration tokens for the search and the reform alike:
   with 1,024 tokens every input statistic stays as token rows, calibration/low_rank_moment.py). The source is
   streamed from disk (SCULPT_STREAM_WEIGHTS=always, which `auto` also picks for the 28-layer model on a
   machine under 60 GB).
   Each stage's peak resident memory is its process's ru_maxrss (os.wait4), its wall time the process's.
3. Reloads the sliced checkpoint with `AutoModelForCausalLM.from_pretrained` (accelerate's device_map with
   --reload-memory of CPU memory and the rest offloaded to disk, so the check itself stays small), checks every
   tensor's shape against the architecture the search chose, and runs one short forward pass.

4. Export and validate (`--stages arch,slice,export,onnx-check,ort,validate`): `arch` records, instead of a
   search, the uniform method's proportional widths at --ratio for every layer with seeded random unit scores
   (`record_architecture`: no importance pass), so `sculpt slice` (the source
   streamed) writes the 28-layer sculpted checkpoint shard by shard in minutes; then `sculpt export` (fp16,
   external data), `onnx-check` (onnx.checker on the graph path, with its external data), `ort` (an ONNX
   Runtime session and one prefill: only where memory allows, ~2x the fp16 weights) and `sculpt validate
   --backends auto`, each in its own process, with SCULPT_STREAM_WEIGHTS as the environment sets it (`auto`:
   the 28-layer model is too big to hold twice here, so export skips the ONNX Runtime check and validate
   measures one model at a time and streams the source).

Prints a Markdown table and writes it, with a JSON copy, to --dir/scale_7b.md|json. Time per decoder layer:
search's importance pass and reform's layer loop as tqdm reports them (seconds per layer over the loop), slice's
as its wall time over the pieces it writes (embeddings, head, each layer).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

QWEN2_7B = {  # Qwen/Qwen2-7B's config.json, less what only tokenization needs
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "hidden_act": "silu", "use_sliding_window": False, "sliding_window": 131072,
    "max_window_layers": 28, "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 151643,
    "eos_token_id": 151643,
}
RECIPE = """model: {{dtype: bfloat16}}
search: {{method: uniform, options: {{split: proportional}}}}
reform: {{method: {reform}, samples: {samples}}}  # the same short calibration (the default preset's is 128)
data: {{calib_samples: {samples}, calib_seqlen: {seqlen}}}
export: {{precision: fp16, external_data: true, check_tokens: {check_tokens}}}
validate: {{seq_len: {eval_seqlen}, max_windows: {eval_windows}, backends: [torch], latency: false, memory: false,
           cache_source: false}}
"""
GIB = 1024 ** 3


def write_checkpoint(directory: Path, layers: int, seed: int) -> None:
    """Qwen2-7B-shaped random weights, one shard per layer (plus embeddings, head), each made, written, dropped."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if (directory / "model.safetensors.index.json").is_file():
        print(f"checkpoint already in {directory}", flush=True)
        return
    directory.mkdir(parents=True, exist_ok=True)
    config = Qwen2Config(**{**QWEN2_7B, "num_hidden_layers": layers}, dtype="bfloat16")
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    groups: dict[str, list[str]] = {}
    for name in shapes:
        match = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"layer{int(match.group(1)):03d}" if match else name.split(".")[-2], []).append(name)
    weight_map, total = {}, 0
    generator = torch.Generator().manual_seed(seed)
    for number, (group, names) in enumerate(sorted(groups.items()), start=1):
        shard = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            if "norm" in name:
                tensors[name] = torch.ones(shapes[name], dtype=torch.bfloat16)
            elif name.endswith("bias"):
                tensors[name] = torch.zeros(shapes[name], dtype=torch.bfloat16)
            else:
                tensors[name] = torch.empty(shapes[name], dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
            total += tensors[name].numel() * 2
            weight_map[name] = shard
        save_file(tensors, directory / shard, metadata={"format": "pt"})
        print(f"  wrote {shard} ({group})", flush=True)
        del tensors
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(directory)
    AutoTokenizer.from_pretrained(default_tokenizer_dir()).save_pretrained(directory)


def record_architecture(checkpoint: Path, recipe: Path, out: Path, ratio: float, seed: int) -> Path:
    """A new artifact whose search stage holds the uniform method's architecture at `ratio` for the whole
    checkpoint: the proportional split's widths (what `sculpt run` keeps), each layer's units chosen by seeded
    random scores in place of the importance pass. With it, `sculpt slice`, `export` and `validate` run on a
    28-layer sculpted model without the ~6 h importance pass and reform (the weights are random either way)."""
    from transformers import AutoConfig

    from pipeline.compress.importance.obs_importance import LayerImportance
    from pipeline.compress.width.legal_widths import DEFAULT_MLP_MULTIPLE
    from pipeline.compress.width.uniform import proportional_shape, uniform_spec
    from pipeline.models.adapters import adapter_for
    from pipeline.models.spec import decoder_ratio
    from pipeline.recipe import load_recipe
    from pipeline.stages import search
    from pipeline.stages.context import StageContext
    from pipeline.workflow import open_or_create

    settings = load_recipe(recipe, {"model.source": str(checkpoint), "search.ratio": ratio, "output": str(out)})
    config = AutoConfig.from_pretrained(checkpoint)
    base = adapter_for(config).dims(config)
    shape, widths = proportional_shape(base, ratio, DEFAULT_MLP_MULTIPLE)
    generator = torch.Generator().manual_seed(seed)
    scores = [LayerImportance(*(torch.rand(size, generator=generator, dtype=torch.float64)
                                for size in (base.num_heads, base.num_kv_heads, base.intermediate_size)))
              for _ in range(base.num_layers)]
    spec = uniform_spec(base, scores, shape, widths, notes={
        "method": "uniform", "split": "proportional", "mlp_multiple": DEFAULT_MLP_MULTIPLE,
        "scores": "seeded random (benchmarks/scale_7b.py --stages arch), not an importance pass"})
    artifact, _ = open_or_create(settings, new=True)
    ctx = StageContext(artifact, settings, progress=False)
    with artifact.stage(search.NAME, options=search.options(ctx), inputs=search.inputs(ctx)) as st:
        (st.dir / "arch.json").write_text(spec.to_json() + "\n")
        st.metrics.update(method="uniform (seeded random scores)", decoder_ratio=decoder_ratio(spec))
    print(f"  {artifact.path}: {shape.num_heads} of {base.num_heads} query heads, {shape.num_kv_heads} KV groups, "
          f"MLP {sorted(set(widths))} of {base.intermediate_size}, decoder ratio {decoder_ratio(spec):.4f}", flush=True)
    return artifact.path


def default_tokenizer_dir() -> Path:
    from pipeline.models.loading import _dequantised_copy, describe_source
    from pipeline.paths import sha256_file

    source = describe_source(None)
    return _dequantised_copy(Path(source["path"]), sha256_file(Path(source["path"])))


def run_measured(args: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run a command, its stderr and stdout appended to `log`; its wall time and peak RSS (its own process)."""
    started = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(args)}\n")
        sink.flush()
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with status {process.returncode}: see {log}")
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2)}


def tqdm_seconds_per_step(log_text: str, desc: str) -> float | None:
    """Elapsed seconds over steps of the last finished tqdm bar named `desc` in the log (its shown rate is a
    moving average; the elapsed time over the count is the mean)."""
    bars = re.findall(rf"{re.escape(desc)}[^\r\n]*?(\d+)/\1 \[(?:(\d+):)?(\d+):(\d+)<", log_text)
    if not bars:
        return None
    steps, hours, minutes, seconds = bars[-1]
    return round((int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)) / int(steps), 1)


RELOAD = r"""
import json, sys, torch, pipeline
from transformers import AutoModelForCausalLM
path, memory, offload, arch = sys.argv[1:5]
spec = json.load(open(arch))
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="auto",
                                             max_memory={"cpu": memory}, offload_folder=offload).eval()
cfg = model.config
hd = 128
for i, layer in enumerate(spec["layers"]):
    attn, mlp = model.model.layers[i].self_attn, model.model.layers[i].mlp
    want = {"q": (layer["num_heads"] * hd, 3584), "k": (layer["num_kv_heads"] * hd, 3584),
            "v": (layer["num_kv_heads"] * hd, 3584), "o": (3584, layer["num_heads"] * hd),
            "gate": (layer["intermediate_size"], 3584), "up": (layer["intermediate_size"], 3584),
            "down": (3584, layer["intermediate_size"])}
    got = {"q": attn.q_proj.weight.shape, "k": attn.k_proj.weight.shape, "v": attn.v_proj.weight.shape,
           "o": attn.o_proj.weight.shape, "gate": mlp.gate_proj.weight.shape, "up": mlp.up_proj.weight.shape,
           "down": mlp.down_proj.weight.shape}
    assert {k: tuple(v) for k, v in got.items()} == want, (i, got, want)
assert tuple(model.lm_head.weight.shape) == (152064, 3584) and tuple(model.model.embed_tokens.weight.shape) == (152064, 3584)
with torch.no_grad():
    logits = model(torch.arange(1, 9).unsqueeze(0)).logits
assert logits.shape == (1, 8, 152064) and torch.isfinite(logits).all()
print(json.dumps({"class": type(model).__name__, "layers": len(spec["layers"]),
                  "params": sum(p.numel() for p in model.parameters()),
                  "first_layer": {k: list(v) for k, v in want.items()}, "logits_finite": True}))
"""


ONNX_CHECK = r"""
import json, sys, onnx
path = sys.argv[1]
onnx.checker.check_model(path)  # a path: the checker reads the graph and checks the external data's files
graph = onnx.load(path, load_external_data=False)
external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
dtypes = sorted({onnx.TensorProto.DataType.Name(t.data_type) for t in external})
print(json.dumps({"checker": "ok", "initializers": len(graph.graph.initializer), "external": len(external),
                  "external_dtypes": dtypes, "nodes": len(graph.graph.node)}))
"""
ORT_RUN = r"""
import json, sys, time, numpy as np, onnxruntime as ort
from exporters.onnx_io import GraphIO
directory = sys.argv[1]
io = GraphIO.load(directory)
started = time.perf_counter()
session = ort.InferenceSession(f"{directory}/model.onnx", providers=["CPUExecutionProvider"])
loaded = time.perf_counter() - started
feeds = io.prefill_feeds(np.arange(1, 9, dtype=np.int64)[None])
logits = session.run(["logits"], feeds)[0]
print(json.dumps({"session_s": round(loaded, 1), "logits_shape": list(logits.shape),
                  "logits_finite": bool(np.isfinite(logits).all())}))
"""


def stage_command(stage: str, sculpt: list[str], recipe: Path, checkpoint: Path, out: Path, version: Path,
                  args) -> list[str]:
    if stage == "search":
        return [*sculpt, "run", str(recipe), "--model", str(checkpoint), "--ratio", str(args.ratio), "--calib-corpus",
                args.calib_corpus, "--stages", "search", "--out", str(out), "--new"]
    if stage == "onnx-check":
        return [sys.executable, "-c", ONNX_CHECK, str(version / "export" / "model.onnx")]
    if stage == "ort":
        return [sys.executable, "-c", ORT_RUN, str(version / "export")]
    if stage == "validate":  # every backend it can run: onnxruntime, unless the model is too big to hold twice
        return [*sculpt, stage, str(version), "--backends", "auto", "--force"]
    if stage == "export":  # measured again even when its options are unchanged (SCULPT_STREAM_WEIGHTS is not one)
        return [*sculpt, stage, str(version), "--force"]
    return [*sculpt, stage, str(version)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scale7b"), help="checkpoint, artifact and log")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (Qwen2-7B has 28)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--reform", default="least-squares", choices=["least-squares", "admm"])
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--calib-corpus", default="auto", help="as `sculpt run --calib-corpus`")
    parser.add_argument("--reload-memory", default="4GiB", help="CPU memory the reload check may use")
    parser.add_argument("--stages", default="write,search,reform,slice,reload",
                        help="any of write, search | arch, reform, slice, reload, export, onnx-check, ort, validate")
    parser.add_argument("--eval-seqlen", type=int, default=256, help="validate.seq_len")
    parser.add_argument("--eval-windows", type=int, default=2, help="validate.max_windows")
    parser.add_argument("--check-tokens", type=int, default=4, help="export.check_tokens (greedy tokens checked)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    checkpoint, out, log = args.dir / f"qwen2-7b-shape-{args.layers}L", args.dir / "artifacts", args.dir / "log.txt"
    args.dir.mkdir(parents=True, exist_ok=True)
    saved = args.dir / "scale_7b.json"  # a rerun of some stages keeps the others' rows
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {"stages": {}}
    results.update({"layers": args.layers, "ratio": args.ratio, "reform": args.reform,
                    "calibration": f"{args.calib_samples} x {args.calib_seqlen}",
                    "evaluation": f"{args.eval_windows} x {args.eval_seqlen}", "threads": torch.get_num_threads()})
    if "write" in stages:
        started = time.perf_counter()
        write_checkpoint(checkpoint, args.layers, args.seed)
        results["write_s"] = round(time.perf_counter() - started, 1)
    recipe = args.dir / "recipe.yaml"
    recipe.write_text(RECIPE.format(reform=args.reform, samples=args.calib_samples, seqlen=args.calib_seqlen,
                                    check_tokens=args.check_tokens, eval_seqlen=args.eval_seqlen,
                                    eval_windows=args.eval_windows))
    streamed = {**os.environ, "SCULPT_STREAM_WEIGHTS": "always"}  # search, reform, slice: the source from disk
    env = {stage: streamed if stage in ("search", "reform", "slice", "reload") else dict(os.environ)
           for stage in ("search", "reform", "slice", "reload", "export", "onnx-check", "ort", "validate")}
    sculpt = [sys.executable, "-m", "pipeline.cli"]
    version = max(out.glob("v*")) if out.is_dir() and any(out.glob("v*")) else out / "v0001"
    if "arch" in stages:
        print("arch ...", flush=True)
        version = record_architecture(checkpoint, recipe, out, args.ratio, args.seed)
    for stage in ("search", "reform", "slice", "export", "onnx-check", "ort", "validate"):
        if stage not in stages:
            continue
        print(f"{stage} ...", flush=True)
        results["stages"][stage] = run_measured(stage_command(stage, sculpt, recipe, checkpoint, out, version, args),
                                                log, env[stage])
        saved.write_text(json.dumps(results, indent=1) + "\n")  # a later failure keeps this row
        if stage == "search":
            version = max(out.glob("v*"))
        if stage in ("onnx-check", "ort"):
            results[stage] = json.loads(log.read_text().strip().splitlines()[-1])
        print(f"  {results['stages'][stage]}", flush=True)
    if "export" in stages:
        record = json.loads((version / "manifest.json").read_text())
        metrics = next(s for s in record["stages"] if s["name"] == "export")["metrics"]
        results["export"] = {key: metrics.get(key) for key in ("precision", "onnx_bytes", "external_data", "export_s",
                                                               "parity", "trt_lint_ok")}
    if "validate" in stages:
        report_file = json.loads((version / "validate" / "report.json").read_text())
        results["validate"] = {"sculpted_ppl": report_file["sculpted"]["by_backend"]["torch"]["perplexity"],
                               "source": report_file.get("source"), "notes": report_file.get("notes")}
    text = log.read_text() if log.is_file() else ""
    per_layer = {"search (importance)": tqdm_seconds_per_step(text, "importance")}
    report = version / "reform" / "report.json"
    if report.is_file():  # the reform stage's own clock, split into statistics, solve and stream
        seconds = json.loads(report.read_text())["seconds"]
        per_layer["reform"] = round(seconds["total"] / args.layers, 1)
        results["reform_seconds"] = seconds
    if "slice" in results["stages"]:
        per_layer["slice"] = round(results["stages"]["slice"]["wall_s"] / (args.layers + 2), 1)
    for stage in ("export", "validate"):
        if stage in results["stages"]:
            per_layer[stage] = round(results["stages"][stage]["wall_s"] / args.layers, 1)
    results["per_layer_s"] = per_layer
    if "reload" in stages:
        model_dir, arch = version / "slice" / "model", version / "reform" / "arch.json"
        reload = [sys.executable, "-c", RELOAD, str(model_dir), args.reload_memory, str(args.dir / "offload"),
                  str(arch if arch.is_file() else version / "search" / "arch.json")]
        results["stages"]["reload"] = run_measured(reload, log, env["reload"])
        results["reload"] = json.loads(log.read_text().strip().splitlines()[-1])
    saved.write_text(json.dumps(results, indent=1) + "\n")
    table = ["| stage | wall s | peak RSS GiB | s per layer |", "|---|---:|---:|---:|"]
    names = {"search": "search (importance)", "reform": "reform", "slice": "slice", "export": "export",
             "validate": "validate"}
    for stage, row in results["stages"].items():
        rate = per_layer.get(names.get(stage, ""))
        table.append(f"| {stage} | {row['wall_s']} | {row['peak_rss_gib']} | {'' if rate is None else rate} |")
    report = "\n".join(table)
    (args.dir / "scale_7b.md").write_text(report + "\n")
    print(report)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
