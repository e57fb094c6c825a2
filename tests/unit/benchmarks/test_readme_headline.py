"""The README's headline table says what docs/results/leaderboard.json holds: every perplexity and kept ratio it
prints for the default and the best baselines is a board record, rounded as printed."""

import json
import re
from pathlib import Path

import pytest

from pipeline.presets import QUALITY

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
    """What a row's label says about its board record: ratio, and for anything but "(the default)" the method,
    reform and reform windows its command spells out (what it does not spell out is the quality preset's: ADMM on
    its reform windows)."""
    ratio = float(re.search(r"(?:--ratio|best baseline at) ([0-9.]+)", label).group(1))
    if "(the default)" in label:
        return {"ratio": ratio, "default": True}
    method, reform = re.search(r"--method ([\w-]+)", label), re.search(r"--reform ([\w+-]+)", label)
    samples = re.search(r"--reform-samples (\d+)", label)
    return {"ratio": ratio, "default": False, "method": method.group(1),
            "reform": reform.group(1) if reform else "admm",
            "reform_samples": int(samples.group(1)) if samples else QUALITY.settings["reform.samples"]}


def test_the_readme_headline_table_matches_the_machine_readable_board():
    board = json.loads((ROOT / "docs/results/leaderboard.json").read_text())
    rows = headline_rows()
    assert any("(the default)" in row[0] for row in rows) and any("best baseline" in row[0] for row in rows)
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
    ("the paper's search at 0.8: `sculpt run --ratio 0.8 --method evolution`",
     {"ratio": 0.8, "default": False, "method": "evolution", "reform": "admm", "reform_samples": 512}),
])
def test_a_row_label_names_its_board_record(label, key):
    assert board_key(label) == key
