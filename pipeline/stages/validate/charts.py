"""PNG charts of a validate report: perplexity by backend, latency of the source vs the sculpted model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PERPLEXITY_CHART = "perplexity.png"
LATENCY_CHART = "latency.png"
SOURCE_COLOUR, SCULPTED_COLOUR = "#8c8c8c", "#2a7ab0"


def write_charts(report: dict[str, Any], directory: Path) -> list[str]:
    """Write the charts the report has data for into `directory`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (CI has no display)
    import matplotlib.pyplot as plt

    written = [_perplexity(plt, report, directory / PERPLEXITY_CHART)]
    if "decode" in report["sculpted"]["by_backend"]["torch"]:
        written.append(_latency(plt, report, directory / LATENCY_CHART))
    return written


def _perplexity(plt, report: dict, path: Path) -> str:
    labels, values, colours = [], [], []
    source = report.get("source")
    if source:
        labels.append("source\ntorch")
        values.append(source["by_backend"]["torch"]["perplexity"]["ppl"])
        colours.append(SOURCE_COLOUR)
    for name, result in report["sculpted"]["by_backend"].items():
        labels.append(f"sculpted\n{name}")
        values.append(result["perplexity"]["ppl"])
        colours.append(SCULPTED_COLOUR)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(values), 3.6))
    bars = ax.bar(labels, values, color=colours)
    ax.bar_label(bars, fmt="%.2f")
    ev = report["evaluation"]
    ax.set_title(f"Perplexity on {ev['corpus']} ({ev['windows']} x {ev['seq_len']} tokens)", fontsize=10)
    ax.set_ylabel("perplexity (lower is better)")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _latency(plt, report: dict, path: Path) -> str:
    mine = report["sculpted"]["by_backend"]["torch"]
    source = report.get("source")
    theirs = source["by_backend"]["torch"] if source else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    _grouped(left, list(mine["prefill"]), theirs and theirs["prefill"], mine["prefill"],
             lambda t: 1e3 * t["median_s"], lambda t: (1e3 * t["p10_s"], 1e3 * t["p90_s"]))
    left.set_title("Prefill latency (batch 1)", fontsize=10)
    left.set_xlabel("prompt tokens")
    left.set_ylabel("ms (lower is better)")
    _grouped(right, list(mine["decode"]), theirs and theirs["decode"], mine["decode"],
             lambda r: r["tokens_per_s"], lambda r: (r["batch"] / r["step"]["p90_s"], r["batch"] / r["step"]["p10_s"]))
    right.set_title(f"Decode throughput ({mine['decode'][next(iter(mine['decode']))]['new_tokens']} steps)",
                    fontsize=10)
    right.set_xlabel("batch size")
    right.set_ylabel("tokens/s (higher is better)")
    rounds = (report.get("speed") or {}).get("rounds")
    fig.suptitle(f"torch: source vs sculpted, timed side by side in {rounds} rounds; median with 10th-90th "
                 f"percentile", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _grouped(ax, keys: list[str], theirs: dict | None, mine: dict, value, spread) -> None:
    import numpy as np

    x = np.arange(len(keys))
    series = ([("source", theirs, SOURCE_COLOUR)] if theirs else []) + [("sculpted", mine, SCULPTED_COLOUR)]
    width = 0.8 / len(series)
    for index, (label, data, colour) in enumerate(series):
        heights = [value(data[k]) for k in keys]
        low_high = [spread(data[k]) for k in keys]
        errors = [[h - lo for h, (lo, _) in zip(heights, low_high)], [hi - h for h, (_, hi) in zip(heights, low_high)]]
        ax.bar(x + (index - (len(series) - 1) / 2) * width, heights, width, yerr=np.clip(errors, 0, None),
               label=label, color=colour, capsize=3)
    ax.set_xticks(x, keys)
    ax.legend(fontsize=8)
