"""Prefill and decode: one graph with a masked cache slot, one graph with an empty past, or two graphs?

TensorRT 10.3 is not known to accept a zero-length past, so the exporter writes ONE graph whose
prompts start after one masked cache slot (past >= 1 everywhere). This measures what that
choice costs against the alternatives, with ONNX Runtime on CPU:

  A  one graph, empty past (past = 0)       works in ONNX Runtime; unconfirmed on TensorRT 10.3
  B  one graph, one masked slot (past = 1)  what llm-sculpt exports and feeds
  C  two graphs: a prefill graph without past inputs + the same decode graph

It reports file sizes, prefill latency of A/B/C at each prompt length, the max |Δlogits| between
them, and decode latency (the same graph for all three).

    python -m benchmarks.graph_layouts                    # SmolLM2-135M, ~5 minutes on 2 cores
    python -m benchmarks.graph_layouts --layers 2 --repeats 3   # a quick check
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


from benchmarks.sculpted_variants import source_model

from exporters.onnx_export import as_sculpted, export_model
from pipeline.measures.latency import time_call
from validators.ort_runner import OrtRunner


class PrefillOnly(nn.Module):
    """Layout C's prefill graph: no past inputs; returns logits and the new cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        from transformers.cache_utils import DynamicCache

        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=DynamicCache(config=self.model.config), use_cache=True)
        entries = len(self.model.config.attention_layers)
        return (out.logits, *[t for i in range(entries) for t in (out.past_key_values.layers[i].keys,
                                                                 out.past_key_values.layers[i].values)])


def export_prefill_only(model: nn.Module, path: Path, opset: int = 18) -> None:
    entries = len(model.config.attention_layers)
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=4096)
    ids = torch.randint(0, model.config.vocab_size, (2, 3))
    inputs = (ids, torch.ones_like(ids), torch.arange(3).expand(2, 3).contiguous())
    names = ["logits"] + [f"present.{i}.{k}" for i in range(entries) for k in ("key", "value")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(PrefillOnly(model).eval(), inputs, dynamo=True, opset_version=opset,
                                    dynamic_shapes=({0: batch, 1: seq},) * 3,
                                    input_names=["input_ids", "attention_mask", "position_ids"], output_names=names)
    program.save(str(path))


def sizes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.name.startswith("model.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", default="32,128,512")
    parser.add_argument("--context", type=int, default=256, help="cache length for the decode timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--out", default="bench-out/graph_layouts")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    model = as_sculpted(source_model(args.random_weights, args.layers)[0]).eval()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        single, split = Path(scratch) / "single", Path(scratch) / "prefill"
        export_model(model, single)
        split.mkdir()
        export_prefill_only(model, split / "model.onnx")
        runner = OrtRunner.from_export_dir(single)
        prefill_graph = ort.InferenceSession(str(split / "model.onnx"), providers=["CPUExecutionProvider"])
        io = runner.io
        result = {"bytes": {"one graph (A, B)": sizes(single), "two graphs (C)": sizes(single) + sizes(split)},
                  "prefill_ms": {}, "max_abs_logits_vs_B": {}}
        for length in (int(n) for n in args.prefill.split(",")):
            ids = np.random.default_rng(0).integers(0, io.vocab_size, (1, length), dtype=np.int64)
            plain = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "position_ids": np.arange(length, dtype=np.int64)[None]}
            empty = {**plain, **{name: np.zeros((1, io.cache_heads(name), 0, io.head_dim), np.float32)
                                 for name in io.past_inputs}}
            layouts = {"A": lambda: runner.run(empty), "B": lambda: runner.prefill(ids)[0],
                       "C": lambda: dict(zip(["logits"], prefill_graph.run(["logits"], plain)))}
            reference = layouts["B"]()["logits"]
            result["max_abs_logits_vs_B"][length] = {
                k: float(np.abs(f()["logits"] - reference).max()) for k, f in layouts.items() if k != "B"}
            result["prefill_ms"][length] = {k: 1000 * time_call(f, 1, args.repeats).median_s
                                            for k, f in layouts.items()}
        decode = runner.decode_throughput(1, args.context, 16, warmup=1, repeats=args.repeats)
        result["decode_ms_per_token"] = 1000 * decode.step.median_s
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["settings"] = vars(args)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| prompt | A: empty past (ms) | B: masked slot (ms) | C: prefill graph (ms) | B vs A | B vs C |",
             "|---|---|---|---|---|---|"]
    for length, timing in result["prefill_ms"].items():
        lines.append(f"| {length} | {timing['A']:.1f} | {timing['B']:.1f} | {timing['C']:.1f} | "
                     f"{timing['B'] / timing['A']:.3f}x | {timing['B'] / timing['C']:.3f}x |")
    mib = {k: f"{v / 2**20:.0f} MiB" for k, v in result["bytes"].items()}
    lines.append(f"\nfiles: {mib}; decode {result['decode_ms_per_token']:.1f} ms/token at context "
                 f"{args.context} (one graph for all layouts); max |Δlogits| vs B: {result['max_abs_logits_vs_B']}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
