"""The leaderboard's results file, Markdown tables and PNG charts (no model code here)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from benchmarks.charts import ppl_vs_ratio, series_styles
from pipeline.errors import SculptError
from pipeline.paths import atomic_write_json

RESULTS = "results.json"
FORMAT = "llm-sculpt/leaderboard"
FINAL = ("done", "n/a")  # statuses a resumed run does not retry (skipped and failed are tried again)


# ---- results.json -----------------------------------------------------------------------------
def load_results(out: Path, settings: dict) -> dict:
    """The results measured so far in `out` with these settings, or a fresh record."""
    path = out / RESULTS
    if not path.is_file():
        return {"format": FORMAT, "version": 1, "settings": settings, "machine": machine(), "entries": {}}
    results = json.loads(path.read_text())
    if results.get("format") != FORMAT:
        raise SculptError(f"{path} is not a leaderboard results file: pass another --out")
    changed = sorted(k for k in set(settings) | set(results["settings"]) if settings.get(k) != results["settings"].get(k))
    if changed:
        raise SculptError(f"{path} was measured with other settings ({', '.join(changed)} differ): pass the same "
                          "settings to resume it, or another --out for a new board")
    return results


def save_results(out: Path, results: dict) -> None:
    """Write atomically: an interrupted write never loses what was measured."""
    atomic_write_json(out / RESULTS, results, indent=1)


def machine() -> dict:
    import torch

    gpu = {"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), **gpu}


def latency_backend(results: dict) -> str:
    device, host = results["settings"]["latency_device"], results["machine"]
    if device.startswith("cuda"):
        return f"{device} ({host.get('gpu', 'GPU')}), torch {host['torch']}"
    return f"CPU ({host['processor']}, {host['cpus']} cores), torch {host['torch']} with {host['torch_threads']} threads"


def is_final(entry: dict | None) -> bool:
    return entry is not None and entry["status"] in FINAL


# ---- tables -----------------------------------------------------------------------------------
def render(out: Path, results: dict, config_names: list[str], ratios: list[float]) -> str:
    """Write leaderboard.md and the charts; return the Markdown."""
    text = markdown(results, config_names, ratios)
    (out / "leaderboard.md").write_text(text)
    charts(out, results, config_names)
    return text


def markdown(results: dict, config_names: list[str], ratios: list[float]) -> str:
    s, entries = results["settings"], results["entries"]
    dense = entries.get("dense")
    tokens = f" ({dense['eval_tokens']:,} scored tokens)" if dense else ""
    lines = [f"# Leaderboard: {s['model']} model, decoder-parameter ratios {', '.join(f'{r:g}' for r in ratios)}", "",
             f"- Perplexity: {s['evaluation']} (evaluation split), the first {s['eval_windows'] or 'all'} windows of "
             f"{s['seq_len']} tokens{tokens}.",
             f"- Calibration: {s['calib_samples']} windows x {s['calib_seqlen']} tokens of {s['calibration']} "
             f"(calibration split), seed {s['seed']}.",
             f"- Methods and perplexity ran on {s['device']}. Latency: {latency_backend(results)}; "
             f"prefill of {s['prefill_len']} tokens; decode of {s['decode_tokens']} tokens after a "
             f"{s['decode_prompt']}-token prompt; median of {s['repeats']}. Speed-ups are against the dense model "
             "timed just before each model, in the same process.",
             "- Ratio: the fraction of decoder-layer parameters kept (embeddings and head excluded); depth methods "
             "remove the fewest units that bring it to or below the target, so 'achieved' can be lower; width "
             "methods snap each layer to whole heads and the nearest multiple of 64 MLP channels, so 'achieved' "
             "can land a little either side of the target.",
             "", "## Perplexity (lower is better)", ""]
    lines += by_ratio(entries, config_names, ratios, lambda e: f"{e['ppl']:.2f}",
                      f"| dense (1.0) | {dense['ppl']:.2f} |" + " |" * (len(ratios) - 1) if dense else None)
    for key, what in (("decode_speedup", "Decode tokens/s"), ("prefill_speedup", "Prefill speed")):
        lines += ["", f"## {what} vs dense at each ratio (x, higher is faster)", ""]
        lines += by_ratio(entries, config_names, ratios, lambda e, key=key: f"{e['latency'][key]:.2f}")
    lines += ["", "## Every measurement", "",
              "| configuration | target | achieved | params (M) | perplexity | decode tok/s (x dense) | "
              "prefill ms (x dense) | method wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    measured = [e for e in entries.values() if e["status"] == "done"]
    for e in sorted(measured, key=lambda e: (e["config"] != "dense", e["config"], -e["ratio"])):
        lat = e["latency"]
        lines.append(f"| {e['config']} | {e['ratio']:g} | {e['achieved_ratio']:.3f} | {e['params'] / 1e6:.1f} | "
                     f"{e['ppl']:.2f} | {lat['decode_tokens_per_s']:.1f} ({lat['decode_speedup']:.2f}x) | "
                     f"{1000 * lat['prefill_s']:.0f} ({lat['prefill_speedup']:.2f}x) | {e['method_wall_s']:.0f} |")
    missing = [e for e in entries.values() if e["status"] != "done"]
    if missing:
        lines += ["", "## Not measured", ""]
        lines += [f"- {e['config']} @ {e['ratio']:g}: {e['status']}: {e['reason']}"
                  for e in sorted(missing, key=lambda e: (e["config"], -e["ratio"]))]
    return "\n".join(lines) + "\n"


def by_ratio(entries: dict, config_names: list[str], ratios: list[float], value,
             first_row: str | None = None) -> list[str]:
    """A configuration x target-ratio table of `value(entry)` for measured entries (n/a or the status otherwise)."""
    lines = ["| configuration | " + " | ".join(f"{r:g}" for r in ratios) + " |", "|---|" + "---:|" * len(ratios)]
    if first_row:
        lines.append(first_row)
    for name in config_names:
        cells = [cell(entries.get(f"{name}@{r:g}"), value) for r in ratios]
        if any(c != "" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cell(entry: dict | None, value) -> str:
    if entry is None:
        return ""
    if entry["status"] == "done":
        return value(entry)
    return "n/a" if entry["status"] == "n/a" else entry["status"]


# ---- charts -----------------------------------------------------------------------------------
def charts(out: Path, results: dict, config_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = results["entries"]
    dense = entries.get("dense")
    series = {name: sorted((e for e in entries.values() if e["config"] == name and e["status"] == "done"),
                           key=lambda e: e["achieved_ratio"]) for name in config_names}
    series = {name: points for name, points in series.items() if points}

    evaluation = results["settings"]["evaluation"]
    ppl_vs_ratio(out / "ppl_vs_ratio.png", {name: [(p["achieved_ratio"], p["ppl"]) for p in points]
                                            for name, points in series.items()},
                 dense["ppl"] if dense else None, "Perplexity vs parameter ratio",
                 ylabel=f"{evaluation} perplexity (log)", xlabel="decoder parameters kept (achieved ratio)",
                 size=(8, 5.5))

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, key, label in ((axes[0], "decode_speedup", "decode tokens/s vs dense (x)"),
                           (axes[1], "prefill_speedup", "prefill speed-up vs dense (x)")):
        for (name, points), style in zip(series.items(), series_styles(len(series))):
            ax.plot([p["latency"][key] for p in points], [p["ppl"] for p in points], linestyle="", label=name,
                    **style)
            for p in points:
                ax.annotate(f"{p['ratio']:g}", (p["latency"][key], p["ppl"]), fontsize=6, alpha=0.7)
        if dense:
            ax.plot([1.0], [dense["ppl"]], marker="*", color="black", markersize=12, linestyle="", label="dense")
        ax.set(xlabel=label, yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"{evaluation} perplexity (log)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Perplexity vs measured CPU speed (labels: target ratio)")
    fig.tight_layout()
    fig.savefig(out / "latency_vs_ppl.png", dpi=120)
    plt.close(fig)
