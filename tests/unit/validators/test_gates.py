"""Quality gates and the baseline check: verdicts a release pipeline acts on, and the lines a person reads."""

import pytest

from validators.gates import GATE_NAMES, QUANTIZED_GATES, check_baseline, check_gates, failing, parse_size


def speedup(median, low=None, high=None, pairs=5):
    """A speed-up as the validate stage records it: the median per-round ratio and the middle half's range."""
    low = median if low is None else low
    high = median if high is None else high
    return {"median": median, "low": low, "high": high, "min": low, "max": high, "pairs": pairs,
            "spread_pct": 100 * (high - low) / median}


METRICS = {
    "ppl": 22.0, "ppl_source": 20.0, "ppl_increase_pct": 10.0,
    "parity": {"onnxruntime": {"ppl_diff_pct": 0.02, "max_abs_logit_diff": 3e-4}},
    "decode_speedup_by_batch": {"1": speedup(1.3, 1.28, 1.32), "4": speedup(1.1, 1.08, 1.12)},
    "prefill_speedup_by_len": {"128": speedup(1.2, 1.15, 1.25)},
    "memory_by_backend": {"torch": 300 * 2**20, "onnxruntime": 200 * 2**20},
    "size_by_backend": {"torch": 250 * 2**20},
    "decode_speedup": 1.3,
}


def verdicts(gates):
    return {r.label: r.status for r in check_gates(METRICS, gates)}


def test_gates_within_their_limits_pass():
    gates = {"max_ppl_increase": 12, "max_ppl": 25, "parity_tolerance": 0.1, "max_logit_diff": 1e-3,
             "min_speedup": 1.05, "min_prefill_speedup": 1.0, "max_memory": "512MiB", "max_size": "300MiB"}
    assert set(gates) | set(QUANTIZED_GATES.values()) == set(GATE_NAMES)  # the quantized ones: below
    results = check_gates(METRICS, gates)
    assert results and all(r.status == "passed" for r in results)


def test_a_failed_gate_says_which_gate_and_by_how_much():
    (result,) = check_gates(METRICS, {"max_ppl_increase": 0})
    assert result.status == "failed"
    line = result.line()
    assert line.startswith("max_ppl_increase failed")
    assert "+10.00 %" in line and "over by 10.00 points" in line


def test_per_subject_gates_fail_only_where_the_limit_is_missed():
    assert verdicts({"min_speedup": 1.2}) == {"min_speedup[1]": "passed", "min_speedup[4]": "failed"}
    failed = [r for r in check_gates(METRICS, {"min_speedup": 1.2}) if r.status == "failed"]
    assert "short by 0.100x" in failed[0].line()
    assert verdicts({"max_memory": "256MiB"}) == {"max_memory[torch]": "failed", "max_memory[onnxruntime]": "passed"}
    assert "over by 44.0 MiB" in check_gates(METRICS, {"max_memory": "256MiB"})[0].line()


def test_gates_without_their_measurement_are_skipped_not_passed():
    bare = {"ppl": 22.0}
    statuses = {r.gate: r.status for r in check_gates(bare, {"max_ppl_increase": 5, "parity_tolerance": 1,
                                                            "min_speedup": 1.1, "max_memory": "1GB"})}
    assert statuses == dict.fromkeys(["max_ppl_increase", "parity_tolerance", "min_speedup", "max_memory"], "skipped")


def test_unset_gates_give_no_result_and_unknown_gates_are_refused():
    assert check_gates(METRICS, {"max_ppl": None}) == []
    with pytest.raises(ValueError, match="max_pp"):
        check_gates(METRICS, {"max_pp": 3})


@pytest.mark.parametrize("text,count", [("512MiB", 512 * 2**20), ("1.5 GB", 1_500_000_000), ("300000", 300000),
                                         ("2kib", 2048), (4096, 4096)])
def test_sizes_read_as_people_write_them(text, count):
    assert parse_size(text) == count


@pytest.mark.parametrize("bad", ["lots", "12 parsecs", -1, True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_baseline_regression_beyond_the_tolerance_fails():
    before = {"ppl": 20.0, "decode_speedup": 1.5}
    (result,) = check_baseline(METRICS, before, "releases/v0003", tolerance_pct=1.0)
    assert result.status == "failed"
    assert "vs 20.000 in releases/v0003 (+10.00 %)" in result.line() and "over by 9.00 points" in result.line()
    (within,) = check_baseline(METRICS, before, "releases/v0003", tolerance_pct=15.0)
    assert within.status == "passed"


def test_a_better_model_than_the_baseline_passes():
    (result,) = check_baseline(METRICS, {"ppl": 30.0}, "releases/v0001", tolerance_pct=0.0)
    assert result.status == "passed"


def test_baseline_speed_check_fails_on_a_slower_model_and_skips_without_timings():
    results = check_baseline(METRICS, {"ppl": 22.0, "decode_speedup": 1.5}, "v1", 1.0, speed_tolerance_pct=5.0)
    assert [r.status for r in results] == ["passed", "failed"]
    line = results[1].line()
    assert "1.500x in v1" in line and "1.300x the source" in line and "limit 1.425x" in line
    untimed = check_baseline(METRICS, {"ppl": 22.0}, "v1", 1.0, speed_tolerance_pct=5.0)
    assert untimed[1].status == "skipped"


# --- speed gates judge side-by-side speed-ups with their spread ------------------------------------------------

def test_a_speed_gate_inside_the_spread_is_undecidable_not_passed_or_failed():
    noisy = {"decode_speedup_by_batch": {"1": speedup(1.12, 1.02, 1.20)}}
    (result,) = check_gates(noisy, {"min_speedup": 1.1})
    assert result.status == "undecidable"
    assert "1.120x the source (middle half of 5 rounds 1.020-1.200x); limit 1.1x" in result.line()
    assert "too noisy to decide" in result.line() and "validate.repeats" in result.line()
    # the same median with a tight spread is decided
    (tight,) = check_gates({"decode_speedup_by_batch": {"1": speedup(1.12, 1.11, 1.13)}}, {"min_speedup": 1.1})
    assert tight.status == "passed"
    (short,) = check_gates(noisy, {"min_speedup": 1.25})
    assert short.status == "failed" and "short by 0.130x" in short.line()


def test_the_recipe_chooses_whether_an_undecidable_gate_fails_the_verdict():
    noisy = {"decode_speedup_by_batch": {"1": speedup(1.12, 1.02, 1.20)}}
    results = check_gates(noisy, {"min_speedup": 1.1})
    assert failing(results, "fail") == results
    assert failing(results, "warn") == []
    with pytest.raises(ValueError, match="fail, warn"):
        failing(results, "ignore")


def test_too_few_rounds_never_decide_a_speed_gate():
    (result,) = check_gates({"decode_speedup_by_batch": {"1": speedup(2.0, pairs=1)}}, {"min_speedup": 1.1})
    assert result.status == "undecidable" and "set validate.repeats to 3 or more" in result.line()


def test_a_speed_up_without_a_spread_from_an_older_run_is_not_judged():
    (result,) = check_gates({"decode_speedup_by_batch": {"1": 1.3}}, {"min_speedup": 1.1})
    assert result.status == "undecidable" and "run `sculpt validate` again" in result.line()


def test_baseline_speed_check_inside_the_spread_is_undecidable():
    noisy = {**METRICS, "decode_speedup_by_batch": {"1": speedup(1.45, 1.38, 1.50), "4": speedup(1.1)}}
    results = check_baseline(noisy, {"ppl": 22.0, "decode_speedup": 1.5}, "v1", 1.0, speed_tolerance_pct=5.0)
    assert results[1].status == "undecidable" and results[1].subject == "decode_speedup"


QUANTIZED = {**METRICS, "ppl_by_backend": {"torch": 22.0, "onnxruntime": 24.2},
             "parity": {"onnxruntime": {"ppl_diff_pct": 10.0, "max_abs_logit_diff": 2.5, "greedy_agreement": 0.875}},
             "quantized_backends": {"onnxruntime": "int4"}}
QUANTIZED_LIMITS = {"quantized_max_ppl_increase": 15, "quantized_min_greedy_agreement": 0.8}


def test_a_quantized_backend_is_judged_by_perplexity_and_greedy_agreement_not_fp32_parity():
    results = {r.label: r for r in check_gates(QUANTIZED, {"parity_tolerance": 0.1, "max_logit_diff": 1e-3,
                                                           **QUANTIZED_LIMITS})}
    assert {label: r.status for label, r in results.items()} == {
        "parity_tolerance[onnxruntime]": "skipped", "max_logit_diff[onnxruntime]": "skipped",
        "quantized_max_ppl_increase[onnxruntime]": "passed", "quantized_min_greedy_agreement[onnxruntime]": "passed"}
    assert "int4 weights, judged by validate.quantized" in results["parity_tolerance[onnxruntime]"].detail


def test_tightened_quantized_gates_fail_saying_by_how_much():
    tight = {"quantized_max_ppl_increase": 5, "quantized_min_greedy_agreement": 0.9}
    results = {r.gate: r for r in check_gates(QUANTIZED, tight)}
    assert {gate: r.status for gate, r in results.items()} == dict.fromkeys(tight, "failed")
    assert "24.200 vs the unquantized sculpted model's 22.000" in results["quantized_max_ppl_increase"].line()
    assert "over by 5.00 points" in results["quantized_max_ppl_increase"].line()
    assert "87.5 %" in results["quantized_min_greedy_agreement"].line()
    assert "short by 2.5 points" in results["quantized_min_greedy_agreement"].line()


def test_quantized_gates_skip_a_model_without_quantized_backends_and_fp32_parity_still_applies():
    results = check_gates(METRICS, {"parity_tolerance": 0.01, **QUANTIZED_LIMITS})
    assert {r.label: r.status for r in results} == {"parity_tolerance[onnxruntime]": "failed",
                                                    "quantized_max_ppl_increase": "skipped",
                                                    "quantized_min_greedy_agreement": "skipped"}
