"""The chart every benchmark table here draws: evaluation perplexity against the fraction of decoder
parameters kept, one line per method, the dense model as a reference line (log y, ratios falling to the right).
"""

from __future__ import annotations

from pathlib import Path


def series_styles(count: int) -> list[dict]:
    """Distinct line/marker styles for `count` series: matplotlib's 10 default colours repeat beyond ten,
    so more series take the 20 colours of tab20 and alternate markers."""
    import matplotlib

    if count <= 10:
        return [{"marker": "o"} for _ in range(count)]
    colours = matplotlib.colormaps["tab20"].colors
    return [{"color": colours[i % 20], "marker": "os^D"[i % 4]} for i in range(count)]


def ppl_vs_ratio(path: Path, series: dict[str, list[tuple[float, float]]], dense_ppl: float | None, title: str,
                 ylabel: str = "evaluation perplexity (log)", xlabel: str = "decoder parameters kept (ratio)",
                 size: tuple[float, float] = (6.4, 4.2)) -> None:
    """Write a PNG to `path`: one line per `series` entry of (ratio, perplexity) points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    for (label, points), style in zip(series.items(), series_styles(len(series))):
        if points:
            points = sorted(points)
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, **style)
    if dense_ppl is not None:
        ax.axhline(dense_ppl, color="gray", ls="--", lw=1, label=f"dense ({dense_ppl:.1f})")
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log")
    ax.set_title(title, fontsize=10)
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
