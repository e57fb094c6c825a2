"""Speed-ups from timings taken side by side: the median of per-round ratios, its spread, and whether a
limit can be judged from them.

Two models timed in the same rounds (`latency.interleave`: A B, B A, A B, ... after warm-up) give one
ratio per round. Load that comes and goes on a shared machine hits both halves of a round alike, so
the ratios are steadier than either model's timings, and nothing measured at another time enters
them. A speed-up is the median ratio with its spread, the interquartile range of the ratios (`low`
to `high`: the middle half of the rounds). A limit is judged only when that range lies wholly on one
side of it; when the range straddles the limit (the margin is smaller than the noise), or there are
fewer than `MIN_PAIRS` rounds to measure the noise with, the verdict is `UNDECIDABLE`.

Pure functions of numbers: no clock, no model, no files.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_PAIRS = 3  # rounds needed before a spread means anything; with fewer a limit is never judged
PASSED, FAILED, UNDECIDABLE = "passed", "failed", "undecidable"


@dataclass(frozen=True)
class Speedup:
    """How many times faster the candidate is than the reference, from rounds timed side by side."""

    median: float  # median of the per-round ratios (not the ratio of the medians)
    low: float  # 25th percentile of the ratios
    high: float  # 75th percentile
    min: float
    max: float
    ratios: tuple[float, ...]  # one per round, in round order

    @property
    def pairs(self) -> int:
        return len(self.ratios)

    @property
    def spread_pct(self) -> float:
        """Width of the interquartile range in percent of the median: how noisy the rounds were."""
        return 100 * (self.high - self.low) / self.median

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "min": self.min, "max": self.max,
                "pairs": self.pairs, "spread_pct": self.spread_pct, "ratios": list(self.ratios)}


def paired_speedup(reference_s: Sequence[float], candidate_s: Sequence[float]) -> Speedup:
    """The speed-up of `candidate` over `reference` from their times (seconds, lower is faster) in the same
    rounds: sample i of both comes from round i, and each round gives the ratio reference / candidate."""
    if len(reference_s) != len(candidate_s) or not reference_s:
        raise ValueError(f"paired timings need one sample of each per round, got {len(reference_s)} and "
                         f"{len(candidate_s)}")
    if min(*reference_s, *candidate_s) <= 0:
        raise ValueError("timings must be positive")
    ratios = tuple(r / c for r, c in zip(reference_s, candidate_s))
    low, high = quartiles(ratios)
    return Speedup(statistics.median(ratios), low, high, min(ratios), max(ratios), ratios)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """25th and 75th percentiles (inclusive: for 5 values, the 2nd and the 4th); one value is its own range."""
    if len(values) == 1:
        return values[0], values[0]
    first, _, third = statistics.quantiles(sorted(values), n=4, method="inclusive")
    return first, third


def judge_at_least(low: float, high: float, pairs: int, limit: float) -> str:
    """PASSED when the whole spread is at or above `limit`, FAILED when it is wholly below, else UNDECIDABLE
    (the spread straddles the limit, or fewer than MIN_PAIRS rounds give no spread to trust)."""
    if pairs < MIN_PAIRS:
        return UNDECIDABLE
    if low >= limit:
        return PASSED
    if high < limit:
        return FAILED
    return UNDECIDABLE
