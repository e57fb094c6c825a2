"""Speed-ups from side-by-side rounds: the median per-round ratio, its spread, and when a limit can be judged."""

import pytest

from pipeline.measures.speedup import MIN_PAIRS, judge_at_least, paired_speedup, quartiles


def test_a_speed_up_is_the_median_of_the_per_round_ratios():
    # round 3 was slowed for both models alike (another job on the machine): its ratio is still 2
    source = [2.0, 2.2, 8.0, 2.0, 2.1]
    sculpted = [1.0, 1.0, 4.0, 1.1, 1.0]
    result = paired_speedup(source, sculpted)
    assert result.ratios == pytest.approx((2.0, 2.2, 2.0, 2.0 / 1.1, 2.1))
    assert result.median == pytest.approx(2.0) and result.pairs == 5
    assert (result.low, result.high) == pytest.approx((2.0, 2.1))  # the 2nd and 4th of the five ratios
    assert (result.min, result.max) == pytest.approx((2.0 / 1.1, 2.2))
    assert result.spread_pct == pytest.approx(5.0)
    assert result.as_dict()["ratios"] == list(result.ratios)


def test_one_round_has_no_spread():
    result = paired_speedup([3.0], [2.0])
    assert result.median == result.low == result.high == 1.5 and result.spread_pct == 0
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)


@pytest.mark.parametrize("reference,candidate", [([1.0, 2.0], [1.0]), ([], []), ([1.0], [0.0])])
def test_unpaired_or_empty_timings_are_refused(reference, candidate):
    with pytest.raises(ValueError):
        paired_speedup(reference, candidate)


@pytest.mark.parametrize("low,high,limit,verdict", [
    (1.10, 1.20, 1.05, "passed"),   # the whole spread clears the limit
    (1.05, 1.20, 1.05, "passed"),   # at the limit counts as meeting it
    (0.90, 1.00, 1.05, "failed"),   # the whole spread misses it
    (1.00, 1.10, 1.05, "undecidable"),  # the limit lies inside the noise
])
def test_a_limit_is_judged_only_outside_the_spread(low, high, limit, verdict):
    assert judge_at_least(low, high, 5, limit) == verdict


def test_too_few_rounds_are_never_judged():
    assert judge_at_least(3.0, 3.0, MIN_PAIRS - 1, 1.0) == "undecidable"
    assert judge_at_least(3.0, 3.0, MIN_PAIRS, 1.0) == "passed"
