"""The convergence chart of a search: every candidate's calibration perplexity per generation."""

from __future__ import annotations

from pathlib import Path


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
