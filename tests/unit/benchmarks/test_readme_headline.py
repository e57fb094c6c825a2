"""The README's headline table says what docs/results/leaderboard.json holds: every perplexity and kept ratio it
prints for the default and the best baselines is a board record, rounded as printed."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WHOLE, SCREEN = 148, 8  # the whole WikiText-2 test split and the board's screen, in 2048-token windows


def headline_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Headline results", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and ("sculpt run" in line or "best baseline" in line)]


def number(cell: str) -> str:
    return cell.replace("*", "").split()[0]


def board_key(label: str) -> dict:
    """What a row's label says about its board record: ratio, and the default or the baseline's method/reform."""
    if "(the default)" in label:
        return {"ratio": float(re.search(r"--ratio ([0-9.]+)", label).group(1)), "default": True}
    ratio = float(re.search(r"best baseline at ([0-9.]+)", label).group(1))
    method = re.search(r"--method ([\w-]+)", label).group(1)
    reform = re.search(r"--reform ([\w+-]+)", label).group(1)
    samples = int(re.search(r"--reform-samples (\d+)", label).group(1))
    return {"ratio": ratio, "default": False, "method": method, "reform": reform, "reform_samples": samples}


def test_the_readme_headline_table_matches_the_machine_readable_board():
    board = json.loads((ROOT / "docs/results/leaderboard.json").read_text())
    rows = headline_rows()
    assert sum("(the default)" in row[0] for row in rows) >= 2 and any("best baseline" in row[0] for row in rows)
    for label, kept, whole, _, screen, *_ in rows:
        key = board_key(label)
        for windows, printed in ((WHOLE, whole), (SCREEN, screen)):
            found = [r for r in board if r["windows"] == windows and all(r[k] == v for k, v in key.items())]
            assert len(found) == 1, f"{label}: {len(found)} board records on {windows} windows"
            record = found[0]
            assert f"{record['wikitext2_test_ppl']:.2f}" == number(printed), (label, windows, record)
            decimals = len(number(kept).split(".")[1])
            assert f"{record['decoder_ratio']:.{decimals}f}" == number(kept), (label, record)


@pytest.mark.parametrize("label, key", [
    ("`sculpt run --ratio 0.8` (the default)", {"ratio": 0.8, "default": True}),
    ("best baseline at 0.5: `... --method goa --reform admm --reform-samples 128`",
     {"ratio": 0.5, "default": False, "method": "goa", "reform": "admm", "reform_samples": 128}),
])
def test_a_row_label_names_its_board_record(label, key):
    assert board_key(label) == key
