"""`sculpt run` with gates and --baseline on a trained tiny model: exit statuses, readable lines, reports, `sculpt list`."""

import json

import pytest
import yaml
from click.testing import CliRunner

import pipeline.stages.validate as validate_stage
from pipeline.cli import cli
from pipeline.workflow import run_stage
from tests.threads import one_thread  # noqa: F401  (autouse)
from tests.trained import CORPUS, trained_checkpoint

GATE_EXIT = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    return trained_checkpoint(root / "model"), corpus


def fast_recipe(directory, model, corpus, ratio, **validate):
    """A recipe whose validate stage times little (one short prefill, batch 1) and skips the memory subprocess."""
    recipe = {
        "preset": "fast",
        "model": {"source": str(model)},
        "data": {"calibration": str(corpus), "evaluation": str(corpus), "calib_samples": 4,
                 "calib_seqlen": 32},
        "search": {"ratio": ratio},
        "validate": {"seq_len": 64, "max_windows": 2, "prefill_lengths": [16], "decode_batch_sizes": [1],
                     "decode_prompt_len": 8, "decode_new_tokens": 4, "warmup": 0, "repeats": 1, "memory": False,
                     "parity_new_tokens": 2, **validate},
        "output": str(directory / "artifacts"),
    }
    path = directory / f"recipe-{ratio}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def sculpt(tmp_path, *args):
    env = {"SCULPT_DATA_DIR": None, "SCULPT_CACHE_DIR": str(tmp_path / "cache")}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_gates_that_pass_exit_zero_and_write_the_reports(tmp_path, trained):
    recipe = fast_recipe(tmp_path, *trained, 0.8, gates={"max_ppl_increase": 100000, "max_size": "1GB"})
    result = sculpt(tmp_path, "run", str(recipe), "--quiet")
    assert result.exit_code == 0, result.output
    version = tmp_path / "artifacts" / "v0001"
    report = json.loads((version / "validate" / "report.json").read_text())
    assert report["passed"] is True and {g["gate"] for g in report["gates"]} == {"max_ppl_increase", "max_size"}
    assert report["headline"]["ppl"] >= report["headline"]["ppl_source"] > 1
    markdown = (version / "validate" / "report.md").read_text()
    assert "verdict: PASSED" in markdown and "![perplexity.png](perplexity.png)" in markdown
    for chart in ("perplexity.png", "latency.png"):
        assert (version / "validate" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict: PASSED" in result.output
    inspected = sculpt(tmp_path, "inspect", str(version)).output
    assert "validation report" in inspected and "max_ppl_increase passed" in inspected
    assert sculpt(tmp_path, "verify", str(version)).exit_code == 0


def test_an_impossible_gate_exits_with_the_gate_status_and_names_the_gate(tmp_path, trained):
    recipe = fast_recipe(tmp_path, *trained, 0.75, gates={"max_ppl_increase": 0})
    result = sculpt(tmp_path, "run", str(recipe), "--quiet")
    assert result.exit_code == GATE_EXIT, result.output
    assert "FAIL max_ppl_increase failed: perplexity" in result.output and "over by" in result.output
    assert "error:" not in result.output  # a verdict, not a crash
    version = tmp_path / "artifacts" / "v0001"
    metrics = json.loads((version / "manifest.json").read_text())["stages"][-1]["metrics"]
    assert metrics["gates_passed"] is False and metrics["failed_gates"][0].startswith("max_ppl_increase failed")
    assert sculpt(tmp_path, "verify", str(version)).exit_code == 0  # the artifact itself is complete

    # loosening only the gate re-uses the measurements and passes
    relaxed = sculpt(tmp_path, "validate", str(version), "--max-ppl-increase", "100000")
    assert relaxed.exit_code == 0, relaxed.output
    assert "measurements reused" in relaxed.output


def test_baseline_with_a_higher_ratio_reports_the_regression(tmp_path, trained):
    release = tmp_path / "release"
    release.mkdir()
    assert sculpt(tmp_path, "run", str(fast_recipe(release, *trained, 0.9, compare_source=False)), "--quiet").exit_code == 0
    baseline = release / "artifacts" / "v0001"

    candidate = tmp_path / "candidate"
    candidate.mkdir()
    recipe = fast_recipe(candidate, *trained, 0.75, compare_source=False)
    result = sculpt(tmp_path, "run", str(recipe), "--baseline", str(release / "artifacts"), "--quiet")
    assert result.exit_code == GATE_EXIT, result.output
    assert "FAIL baseline[ppl] failed: perplexity" in result.output and str(baseline) in result.output

    # the same model against itself is no regression
    same = sculpt(tmp_path, "validate", str(baseline), "--baseline", str(baseline))
    assert same.exit_code == 0, same.output


def test_baseline_measured_differently_is_refused(tmp_path, trained):
    release = tmp_path / "release"
    release.mkdir()
    sculpt(tmp_path, "run", str(fast_recipe(release, *trained, 0.9, compare_source=False)), "--quiet")
    recipe = fast_recipe(tmp_path, *trained, 0.8, compare_source=False, seq_len=32)
    result = sculpt(tmp_path, "run", str(recipe), "--baseline", str(release / "artifacts" / "v0001"), "--quiet")
    assert result.exit_code == 1 and "validate.seq_len" in result.output


def test_a_missing_baseline_fails_before_any_work(tmp_path, trained):
    recipe = fast_recipe(tmp_path, *trained, 0.8)
    result = sculpt(tmp_path, "run", str(recipe), "--baseline", str(tmp_path / "nope"), "--quiet")
    assert result.exit_code == 1 and "baseline" in result.output
    assert not (tmp_path / "artifacts").exists()


def test_list_shows_versions_in_order_with_their_verdicts(tmp_path, trained):
    passing = fast_recipe(tmp_path, *trained, 0.8, gates={"max_ppl_increase": 100000})
    assert sculpt(tmp_path, "run", str(passing), "--quiet").exit_code == 0
    failing = fast_recipe(tmp_path, *trained, 0.75, gates={"max_ppl_increase": 0})
    assert sculpt(tmp_path, "run", str(failing), "--quiet", "--new").exit_code == GATE_EXIT

    listing = sculpt(tmp_path, "list", str(tmp_path / "artifacts"))
    assert listing.exit_code == 0
    header, first, second = listing.output.strip().splitlines()
    assert header.split()[:3] == ["version", "created", "ratio"]
    assert first.startswith("v0001") and "passed" in first
    assert second.startswith("v0002") and "gates failed" in second
    rows = [json.loads(line) for line in sculpt(tmp_path, "list", str(tmp_path / "artifacts"), "--json").output.split("\n")
            if line]
    assert [r["version"] for r in rows] == ["v0001", "v0002"]
    assert rows[0]["ppl"] < rows[1]["ppl"]


def read_report(version):
    return json.loads((version / "validate" / "report.json").read_text())


def test_the_source_cache_gives_perplexity_but_never_timings(tmp_path, trained):
    recipe = fast_recipe(tmp_path, *trained, 0.8, repeats=3)
    assert sculpt(tmp_path, "run", str(recipe), "--quiet").exit_code == 0
    (entry_path,) = (tmp_path / "cache" / "validate-source").glob("*.json")
    entry = json.loads(entry_path.read_text())
    figures = entry["source"]["by_backend"]["torch"]
    assert set(figures) == {"perplexity", "size_bytes"}  # what was stored: no timings, no memory

    # an entry that holds timings (an older llm-sculpt's, or edited by hand): only its perplexity may be used
    figures["perplexity"]["ppl"] = 12345.0
    figures["decode"] = {"1": {"tokens_per_s": 1e9, "step": {"median_s": 1e-9, "p10_s": 1e-9, "p90_s": 1e-9,
                                                             "repeats": 5}, "batch": 1, "prompt_len": 8,
                               "new_tokens": 4}}
    figures["prefill"] = {"16": {"median_s": 1e-9, "p10_s": 1e-9, "p90_s": 1e-9, "repeats": 5}}
    entry_path.write_text(json.dumps(entry))
    version = tmp_path / "artifacts" / "v0001"
    again = sculpt(tmp_path, "validate", str(version), "--backends", "torch")  # new settings: measured again
    assert again.exit_code == 0, again.output
    report = read_report(version)
    headline = report["headline"]
    assert headline["ppl_source"] == 12345.0 and headline["source_from_cache"] is True
    source_timings = report["source"]["by_backend"]["torch"]
    assert source_timings["decode"]["1"]["tokens_per_s"] < 1e6 and source_timings["prefill"]["16"]["median_s"] > 1e-6
    # the speed-ups are this run's side-by-side rounds, not sculpted / cached timings (which would be ~1e-5)
    decode = report["speed"]["decode"]["1"]
    assert report["speed"]["compared"] == ["source/torch", "sculpted/torch"] and decode["pairs"] == 3
    assert headline["decode_speedup"] == decode["median"] and 0.2 < decode["median"] < 5
    assert decode["low"] <= decode["median"] <= decode["high"]
    assert headline["speed"]["rounds"] == 3 and headline["speed"]["noise_pct"] >= 0
    markdown = (version / "validate" / "report.md").read_text()
    assert f"{decode['median']:.2f}x [{decode['low']:.2f}-{decode['high']:.2f}]" in markdown
    prefill = report["speed"]["prefill"]["16"]
    assert f"{prefill['median']:.2f}x [{prefill['low']:.2f}-{prefill['high']:.2f}]" in markdown
    assert "timed side by side in this run, 3 interleaved rounds" in markdown
    assert "its timings and memory were measured in this run" in markdown
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["stages"][-1]["metrics"]["speed"]["rounds"] == 3


def noisy_timings(ratios):
    """A stand-in for `time_side_by_side`: the sculpted model `ratios[i]` times as fast as the source in round i."""
    def time_side_by_side(runners, work, say):
        def series(label):
            return [1.0 if label.startswith("source/") else 1.0 / ratio for ratio in ratios]
        return {label: {"prefill": {str(length): series(label) for length in work.prefill_lengths},
                        "decode": {str(batch): series(label) for batch in work.decode_batch_sizes}}
                for label in runners}
    return time_side_by_side


def test_a_speed_gate_inside_the_noise_is_undecidable_and_the_recipe_says_what_that_does(tmp_path, trained,
                                                                                         monkeypatch):
    # median 1.1x, middle half 1.0-1.2x: a limit of 1.05x lies inside the noise
    monkeypatch.setattr(validate_stage, "time_side_by_side", noisy_timings([1.0, 1.2, 1.1, 0.9, 1.3]))
    recipe = fast_recipe(tmp_path, *trained, 0.8, repeats=5, gates={"min_speedup": 1.05})
    result = sculpt(tmp_path, "run", str(recipe), "--quiet")
    assert result.exit_code == GATE_EXIT, result.output  # on_undecidable: fail (the default)
    assert "FAIL min_speedup[1] undecidable" in result.output and "too noisy to decide" in result.output
    version = tmp_path / "artifacts" / "v0001"
    report = read_report(version)
    assert [g["status"] for g in report["gates"]] == ["undecidable"] and report["passed"] is False
    assert "1 undecidable" in (version / "validate" / "report.md").read_text()

    # the recipe may make it a warning: same measurements, a passing verdict, the undecided gate on record
    monkeypatch.setenv("SCULPT_CACHE_DIR", str(tmp_path / "cache"))
    run_stage(version, "validate", {"validate.on_undecidable": "warn"}, progress=False)  # no GateFailure
    metrics = json.loads((version / "manifest.json").read_text())["stages"][-1]["metrics"]
    assert metrics["gates_passed"] is True and metrics["undecided_gates"][0].startswith("min_speedup[1] undecidable")


def test_a_speed_gate_with_too_few_rounds_is_a_recipe_error(tmp_path, trained):
    recipe = fast_recipe(tmp_path, *trained, 0.8, repeats=1, gates={"min_speedup": 1.05})
    result = sculpt(tmp_path, "run", str(recipe), "--quiet")
    assert result.exit_code == 1 and "validate.repeats to 3 or more" in result.output
    assert not (tmp_path / "artifacts").exists()


def test_list_of_an_empty_directory_says_how_to_make_a_version(tmp_path):
    (tmp_path / "empty").mkdir()
    result = sculpt(tmp_path, "list", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "sculpt run --out" in result.output
