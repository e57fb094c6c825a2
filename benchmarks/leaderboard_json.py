"""The machine-readable leaderboard (docs/results/leaderboard.json): one record per model measured.

    {"ratio", "method", "reform", "reform_samples", "default", "decoder_ratio", "wikitext2_test_ppl", "windows"}

`default` is true on rows made by the default pipeline (`sculpt run` with no options: the quality preset);
`windows` is how many 2048-token WikiText-2 test windows were scored (148 = the whole split);
`reform_samples` how many 512-token calibration windows the reform fitted on (null without a reform). A row is
keyed by (ratio, method, reform, reform_samples, default, windows): merging a newer measurement of the same row
replaces it, so a screen on 8 windows and a whole-split run of the same model stand side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.paths import atomic_write_json
from pipeline.presets import DEFAULT_PRESET


def record(*, ratio: float, method: str, reform: str, reform_samples: int | None, default: bool,
           decoder_ratio: float, ppl: float, windows: int) -> dict:
    """One board record (the reform windows are null without a reform: there is nothing they fitted)."""
    return {"ratio": ratio, "method": method, "reform": reform,
            "reform_samples": None if reform == "none" else reform_samples, "default": default,
            "decoder_ratio": round(decoder_ratio, 6), "wikitext2_test_ppl": round(ppl, 4), "windows": windows}


def dense_record(ppl: float, windows: int) -> dict:
    """The dense source's record (ratio 1, nothing cut or reformed)."""
    return record(ratio=1.0, method="dense", reform="none", reform_samples=None, default=False, decoder_ratio=1.0,
                  ppl=ppl, windows=windows)


def records(results: dict) -> list[dict]:
    """The board's records from a leaderboard results.json (WikiText-2 test, done entries only)."""
    settings = results["settings"]
    if settings["evaluation"] != "wikitext2" or settings["seq_len"] != 2048:
        raise ValueError("the machine-readable board holds WikiText-2 test perplexities on 2048-token windows")
    windows = lambda entry: entry["eval_tokens"] // (settings["seq_len"] - 1)
    rows = []
    for key, entry in results["entries"].items():
        if key == "dense" or entry.get("status") != "done":
            continue
        resolved = entry.get("resolved", {})
        rows.append(record(ratio=entry["ratio"], method=resolved.get("method", entry["method"]),
                           reform=resolved.get("reform", "none"),
                           reform_samples=resolved.get("reform_samples", settings["calib_samples"]),
                           default=resolved.get("preset") == DEFAULT_PRESET and
                           entry["config"] == f"preset {DEFAULT_PRESET}",
                           decoder_ratio=entry["achieved_ratio"], ppl=entry["ppl"], windows=windows(entry)))
    dense = results["entries"].get("dense")
    if dense and dense.get("status") == "done":
        rows.append(dense_record(dense["ppl"], windows(dense)))
    return rows


def merge_into(path: Path, results: dict) -> list[dict]:
    """Merge a leaderboard results.json into the board at `path` (created if missing); returns the merged records."""
    return merge_rows(path, records(results))


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """Merge `rows` (from `record`) into the board at `path`, replacing rows with the same key."""
    board = json.loads(path.read_text()) if path.is_file() else []
    key = lambda row: (row["ratio"], row["method"], row["reform"], row.get("reform_samples"), row["default"],
                       row["windows"])
    merged = {key(row): row for row in board}
    merged.update({key(row): row for row in rows})
    ordered = sorted(merged.values(), key=lambda r: (-r["ratio"], r["windows"], r["wikitext2_test_ppl"]))
    atomic_write_json(path, ordered, indent=1)
    return ordered
