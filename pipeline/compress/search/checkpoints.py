"""What the evolutionary search keeps to resume and what it logs, through the stage's stores (no file I/O here).

The checkpoint (`evolution.json`, in the state store) is replaced after every generation; the log
(`search.jsonl`, in the outputs) is rewritten from the checkpointed history, so a resumed run still
logs every generation. A second track (the skip-free search) has its own names, with its track
(`search-skip-free.jsonl`). The importance (`importance.pt`) is kept with the width costs its pass priced, FLAP's scores and
the input means of the output projections.
"""

from __future__ import annotations

from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.compress.registry import Store

CHECKPOINT = "evolution.json"
IMPORTANCE = "importance.pt"
LOG = "search.jsonl"
CHART = "convergence.png"

WidthCosts = list[dict[int, float]]  # per layer, the removal cost of each MLP width (mlp_width_costs.py)


def track_file(name: str, track: str) -> str:
    """`name` for the main track, `stem-<track>.suffix` for another (e.g. search-skip-free.jsonl)."""
    if track == "main":
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-{track}{dot}{suffix}"


def save_checkpoint(state: Store, checkpoint: dict, track: str = "main") -> None:
    state.save(track_file(CHECKPOINT, track), checkpoint)


def load_checkpoint(state: Store, fingerprint: str, track: str = "main") -> dict | None:
    """The checkpoint of this very search (same fingerprint), else None."""
    checkpoint = state.load(track_file(CHECKPOINT, track))
    return checkpoint if isinstance(checkpoint, dict) and checkpoint.get("fingerprint") == fingerprint else None


def save_importance(state: Store, fingerprint: str, importance: list[LayerImportance],
                    width_costs: WidthCosts | None = None, flap_scores: list | None = None,
                    means: list | None = None) -> None:
    rows = [(imp.q_heads, imp.kv_groups, imp.mlp_channels) for imp in importance]
    state.save(IMPORTANCE, {"fingerprint": fingerprint, "layers": rows, "width_costs": width_costs,
                            "flap_scores": flap_scores, "means": means})


def load_importance(state: Store, fingerprint: str) -> tuple[list[LayerImportance], WidthCosts | None,
                                                               list | None, list | None] | None:
    """The importance and, when that pass also priced the MLP widths, scored FLAP's units or kept the output
    projections' input means, the width costs, FLAP's scores and the means."""
    data = state.load(IMPORTANCE)
    if not data or data.get("fingerprint") != fingerprint:
        return None
    return ([LayerImportance(*row) for row in data["layers"]], data.get("width_costs"), data.get("flap_scores"),
            data.get("means"))


def write_log(outputs: Store, history: list[dict], track: str = "main") -> None:
    outputs.save(track_file(LOG, track), history)
