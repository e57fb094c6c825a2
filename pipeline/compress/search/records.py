"""What the evolutionary search leaves on disk: its checkpoint, its log and its convergence plot.

The checkpoint lives in the stage's resume directory and is replaced atomically after
every generation; the log (`search.jsonl`) and the plot (`convergence.png`) go into the
artifact, rewritten from the checkpointed history, so a resumed run still logs every generation.
A second track (the skip-free search) has its own files, named with its track (`search-skip-free.jsonl`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pipeline.compress.importance.obs_importance import LayerImportance

CHECKPOINT = "evolution.json"
IMPORTANCE = "importance.pt"


def track_file(name: str, track: str) -> str:
    """`name` for the main track, `stem-<track>.suffix` for another (e.g. search-skip-free.jsonl)."""
    if track == "main":
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-{track}{dot}{suffix}"


def save_checkpoint(state_dir: Path, state: dict, track: str = "main") -> None:
    path = state_dir / track_file(CHECKPOINT, track)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(state))
    os.replace(temp, path)


def load_checkpoint(state_dir: Path, fingerprint: str, track: str = "main") -> dict | None:
    """The checkpoint of this very search (same fingerprint), else None."""
    path = state_dir / track_file(CHECKPOINT, track)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if state.get("fingerprint") == fingerprint else None


WidthCosts = list[dict[int, float]]  # per layer, the removal cost of each MLP width (mlp_width_costs.py)


def save_importance(state_dir: Path, fingerprint: str, importance: list[LayerImportance],
                    width_costs: WidthCosts | None = None) -> None:
    rows = [(imp.q_heads, imp.kv_groups, imp.mlp_channels) for imp in importance]
    temp = state_dir / (IMPORTANCE + ".tmp")
    torch.save({"fingerprint": fingerprint, "layers": rows, "width_costs": width_costs}, temp)
    os.replace(temp, state_dir / IMPORTANCE)


def load_importance(state_dir: Path, fingerprint: str) -> tuple[list[LayerImportance], WidthCosts | None] | None:
    """The importance and, when that pass also priced the MLP widths, the width costs."""
    path = state_dir / IMPORTANCE
    if not path.is_file():
        return None
    data = torch.load(path, weights_only=True)
    if data.get("fingerprint") != fingerprint:
        return None
    return [LayerImportance(*row) for row in data["layers"]], data.get("width_costs")


def write_log(out_dir: Path, history: list[dict], track: str = "main") -> None:
    with open(out_dir / track_file("search.jsonl", track), "w") as log:
        for row in history:
            log.write(json.dumps(row) + "\n")


def plot_convergence(path: Path, history: list[dict], title: str) -> None:
    """Every candidate's calibration perplexity per generation, the best so far and the parents' mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in history:
        ax.scatter([row["generation"]] * len(row["ppl"]), row["ppl"], s=8, color="tab:gray", alpha=0.4, lw=0)
    generations = [row["generation"] for row in history]
    ax.plot(generations, [row["best_ppl"] for row in history], marker="o", ms=3, color="tab:blue", label="best so far")
    ax.plot(generations, [sum(r["parents_ppl"]) / len(r["parents_ppl"]) for r in history], color="tab:orange",
            lw=1, label="parents' mean")
    if history and history[0].get("seed_ppl"):
        ax.axhline(history[0]["seed_ppl"], color="tab:red", ls="--", lw=1, label="initialisation (best seed)")
    ax.set_yscale("log")
    best = [row["best_ppl"] for row in history]
    if best:  # candidates far off the best would squash the interesting range
        ax.set_ylim(min(best) * 0.97, max(max(best), history[0].get("seed_ppl") or 0) * 1.6)
    ax.set_xlabel("generation (0 = initial population)")
    ax.set_ylabel("calibration perplexity")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
