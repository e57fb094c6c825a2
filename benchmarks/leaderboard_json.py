"""The machine-readable leaderboard (docs/results/leaderboard.json): one record per model measured.

    {"ratio", "method", "reform", "default", "decoder_ratio", "wikitext2_test_ppl", "windows"}

`default` is true on rows made by the default pipeline (`sculpt run` with no options: the quality preset);
`windows` is how many 2048-token WikiText-2 test windows were scored (148 = the whole split). A row is keyed
by (ratio, method, reform, windows): merging a newer measurement of the same row replaces it, so a screen
on 8 windows and a whole-split run of the same model stand side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.paths import atomic_write_json
from pipeline.presets import DEFAULT_PRESET


def records(results: dict) -> list[dict]:
    """The board's records from a leaderboard results.json (WikiText-2 test, done entries only)."""
    settings = results["settings"]
    if settings["evaluation"] != "wikitext2" or settings["seq_len"] != 2048:
        raise ValueError("the machine-readable board holds WikiText-2 test perplexities on 2048-token windows")
    rows = []
    for key, entry in results["entries"].items():
        if key == "dense" or entry.get("status") != "done":
            continue
        resolved = entry.get("resolved", {})
        rows.append({"ratio": entry["ratio"], "method": resolved.get("method", entry["method"]),
                     "reform": resolved.get("reform", "none"),
                     "default": resolved.get("preset") == DEFAULT_PRESET and entry["config"] == f"preset {DEFAULT_PRESET}",
                     "decoder_ratio": round(entry["achieved_ratio"], 6),
                     "wikitext2_test_ppl": round(entry["ppl"], 4),
                     "windows": entry["eval_tokens"] // (settings["seq_len"] - 1)})
    dense = results["entries"].get("dense")
    if dense and dense.get("status") == "done":
        rows.append({"ratio": 1.0, "method": "dense", "reform": "none", "default": False, "decoder_ratio": 1.0,
                     "wikitext2_test_ppl": round(dense["ppl"], 4),
                     "windows": dense["eval_tokens"] // (settings["seq_len"] - 1)})
    return rows


def merge_into(path: Path, results: dict) -> list[dict]:
    """Merge `results` into the board at `path` (created if missing); returns the merged records."""
    board = json.loads(path.read_text()) if path.is_file() else []
    key = lambda row: (row["ratio"], row["method"], row["reform"], row["default"], row["windows"])
    merged = {key(row): row for row in board}
    merged.update({key(row): row for row in records(results)})
    rows = sorted(merged.values(), key=lambda r: (-r["ratio"], r["windows"], r["wikitext2_test_ppl"]))
    atomic_write_json(path, rows, indent=1)
    return rows
