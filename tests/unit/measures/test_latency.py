"""Latency helpers: warm-up then repeated timing, median and spread, decode with a KV cache."""

import pytest

from pipeline.measures.latency import (
    decode_result,
    decode_throughput,
    interleave,
    prefill_latency,
    summarise,
    time_call,
)
from tests.factories import tiny_model


def test_summary_reports_median_and_spread():
    timing = summarise([3.0, 1.0, 2.0, 100.0, 2.5])
    assert timing.median_s == 2.5 and timing.repeats == 5
    assert timing.p10_s <= timing.median_s <= timing.p90_s


def test_time_call_warms_up_before_it_measures():
    calls = []
    timing = time_call(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and timing.repeats == 3


def test_prefill_and_decode_on_a_tiny_model():
    model = tiny_model("llama")
    assert prefill_latency(model, seq_len=16, repeats=2).median_s > 0
    result = decode_throughput(model, batch=2, prompt_len=8, new_tokens=4, repeats=2)
    assert result.tokens_per_s == pytest.approx(2 / result.step.median_s)


def test_interleave_times_every_call_in_each_round_and_alternates_the_compared_pair():
    ran = []

    def call(name, seconds):
        def run():
            ran.append(name)
            return seconds
        return run

    samples = interleave([call("A", 1.0), call("B", 2.0), call("C", 3.0)], warmup=1, repeats=3)
    # warm-up round, then A B C / B A C / A B C: the pair swaps who goes first, so the same call
    # never always follows the last one (C ends each round; B then A then B start the next)
    assert ran == ["A", "B", "C", "B", "A", "C", "A", "B", "C", "B", "A", "C"]
    assert samples == [[1.0] * 3, [2.0] * 3, [3.0] * 3]  # the warm-up round is not kept


def test_decode_result_from_per_step_samples():
    result = decode_result([0.1, 0.2, 0.3], batch=4, prompt_len=8, new_tokens=16)
    assert result.tokens_per_s == pytest.approx(20.0) and result.step.repeats == 3
