"""Quality gates and the baseline check: verdicts a release pipeline acts on, and the lines a person reads."""

import pytest

from validators.gates import GATE_NAMES, check_baseline, check_gates, parse_size

METRICS = {
    "ppl": 22.0, "ppl_source": 20.0, "ppl_increase_pct": 10.0,
    "parity": {"onnxruntime": {"ppl_diff_pct": 0.02, "max_abs_logit_diff": 3e-4}},
    "decode_speedup_by_batch": {"1": 1.3, "4": 1.1},
    "prefill_speedup_by_len": {"128": 1.2},
    "memory_by_backend": {"torch": 300 * 2**20, "onnxruntime": 200 * 2**20},
    "size_by_backend": {"torch": 250 * 2**20},
    "decode_speedup": 1.3,
}


def verdicts(gates):
    return {r.label: r.status for r in check_gates(METRICS, gates)}


def test_gates_within_their_limits_pass():
    gates = {"max_ppl_increase": 12, "max_ppl": 25, "parity_tolerance": 0.1, "max_logit_diff": 1e-3,
             "min_speedup": 1.05, "min_prefill_speedup": 1.0, "max_memory": "512MiB", "max_size": "300MiB"}
    assert set(gates) == set(GATE_NAMES)
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
    assert "decode speed-up 1.300x vs 1.500x" in results[1].line()
    untimed = check_baseline(METRICS, {"ppl": 22.0}, "v1", 1.0, speed_tolerance_pct=5.0)
    assert untimed[1].status == "skipped"
