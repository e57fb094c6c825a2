"""The leaderboard script on a tiny model: it measures, reports n/a and skipped configurations, resumes."""

import json

import pytest

from benchmarks import leaderboard
from tests.factories import tiny_checkpoint
from tests.threads import one_thread  # noqa: F401  (autouse)


@pytest.fixture()
def board(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(400)))
    monkeypatch.setattr(leaderboard, "EXTRA_CONFIGURATIONS", (
        {"name": "not-a-method", "method": "no-such-method"},
        {"name": "shortgpt + bad reform", "method": "shortgpt", "overrides": {"reform.method": "no-such-reform"}},
    ))
    model = tiny_checkpoint(tmp_path / "model", num_hidden_layers=6)
    args = ["--out", str(tmp_path / "out"), "--model", str(model), "--eval-corpus", str(corpus),
            "--calib-corpus", str(corpus), "--seq-len", "64", "--eval-windows", "2", "--calib-samples", "4",
            "--calib-seqlen", "32", "--prefill-len", "16", "--decode-prompt", "8", "--decode-tokens", "4",
            "--repeats", "1"]
    return tmp_path / "out", args


ALL = ["--methods", "shortgpt,attn-drop,not-a-method,shortgpt + bad reform"]


def test_the_board_measures_every_configuration_and_says_why_some_are_missing(board, capsys):
    out, args = board
    assert leaderboard.main(args + ALL + ["--ratios", "0.8,0.5"]) == 0
    results = json.loads((out / "results.json").read_text())["entries"]
    done = results["shortgpt@0.8"]
    assert done["status"] == "done" and done["achieved_ratio"] <= 0.8 and done["ppl"] > 1
    assert done["latency"]["decode_tokens_per_s"] > 0 and done["latency"]["dense"]["prefill_s"] > 0
    assert results["attn-drop@0.5"]["status"] == "n/a" and "--ratio" in results["attn-drop@0.5"]["reason"]
    assert results["not-a-method@0.8"]["status"] == "skipped"
    assert results["shortgpt + bad reform@0.8"]["status"] == "skipped"
    assert "reform.method" in results["shortgpt + bad reform@0.8"]["reason"]
    table = (out / "leaderboard.md").read_text()
    assert "| shortgpt |" in table and "n/a" in table and "dense (1.0)" in table
    # the speed of every configuration at each target ratio, side by side (depth vs width at equal ratio)
    decode = table.split("## Decode tokens/s vs dense at each ratio")[1].split("##")[0]
    assert f"| shortgpt | {done['latency']['decode_speedup']:.2f} |" in decode and "| attn-drop |" in decode
    assert (out / "ppl_vs_ratio.png").stat().st_size > 0 and (out / "latency_vs_ppl.png").stat().st_size > 0
    assert not (out / "artifacts").exists()  # measured artifacts are removed unless kept
    assert "| shortgpt |" in capsys.readouterr().out


def test_a_second_run_resumes_and_refuses_other_settings(board, monkeypatch, capsys):
    out, args = board
    assert leaderboard.main(args + ALL + ["--ratios", "0.8"]) == 0
    retried = []

    def run_entry(args, config, ratio, *rest):
        if config["name"] in ("shortgpt", "attn-drop"):
            pytest.fail("a measured configuration ran again")
        retried.append(config["name"])
        return {"status": "skipped", "reason": "still skipped"}

    monkeypatch.setattr(leaderboard, "run_entry", run_entry)
    # A method name selects every configuration of that method; skipped ones are tried again.
    assert leaderboard.main(args + ["--ratios", "0.8", "--methods", "shortgpt,attn-drop"]) == 0
    assert retried == ["shortgpt + bad reform"]
    assert leaderboard.main(args + ["--ratios", "0.8", "--eval-windows", "3"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_the_board_runs_only_the_stages_it_reads(board):
    """No ONNX export, engine build or second-backend validation: minutes per entry on SmolLM2."""
    from pipeline.artifacts import read_manifest

    out, args = board
    assert leaderboard.main(args + ["--methods", "shortgpt", "--ratios", "0.8", "--keep-artifacts"]) == 0
    manifest = read_manifest(next((out / "artifacts").rglob("manifest.json")).parent)
    assert [stage.name for stage in manifest.stages] == list(leaderboard.STAGES)  # reform recorded as skipped
    assert not any(path.suffix == ".onnx" for path in (out / "artifacts").rglob("*"))


def test_a_reform_with_bias_is_its_own_row_and_recipe():
    configs = leaderboard.configurations(["goa"], ["admm", "admm+bias"])
    assert [c["name"] for c in configs[:2]] == ["goa + admm", "goa + admm+bias"]
    assert configs[0]["overrides"] == {"preset": "fast", "reform.method": "admm"}
    assert configs[1]["overrides"] == {"preset": "fast", "reform.method": "admm", "reform.bias": True}
    with pytest.raises(SystemExit, match="unknown reform 'admm\\+foo'"):
        leaderboard.reform_overrides("admm+foo")


def test_no_dense_leaves_the_dense_row_to_another_run(board):
    out, args = board
    assert leaderboard.main(args + ["--methods", "shortgpt", "--ratios", "0.8", "--no-latency", "--no-dense"]) == 0
    results = json.loads((out / "results.json").read_text())["entries"]
    assert "dense" not in results and results["shortgpt@0.8"]["status"] == "done"


def test_a_baseline_gets_the_default_pipelines_reform_windows_and_a_preset_its_own(board, monkeypatch):
    from pipeline.presets import DEFAULT_PRESET, get_preset

    out, args = board
    args = args + ["--reforms", "admm", "--presets", "fast"]
    assert leaderboard.parse_args(args).reform_samples == get_preset(DEFAULT_PRESET).settings.get("reform.samples")
    parsed = leaderboard.parse_args(args + ["--reform-samples", "6"])
    configs = {c["name"]: c for c in leaderboard.configurations(["uniform"], ["admm"], ["fast"])}
    baseline = leaderboard.recipe_for(parsed, configs["uniform + admm"], 0.8, out / "a")
    preset = leaderboard.recipe_for(parsed, configs["preset fast"], 0.8, out / "b")
    assert (baseline.reform.method, baseline.reform.samples) == ("admm", 6)
    assert preset.reform.samples == get_preset("fast").settings.get("reform.samples")  # what --preset fast makes


def test_a_kept_artifact_is_scored_again_on_more_text_and_joins_the_board(board, tmp_path):
    from benchmarks import artifact_perplexity

    out, args = board
    assert leaderboard.main(args + ["--methods", "uniform + admm", "--reforms", "admm", "--reform-samples", "3",
                                    "--ratios", "0.8", "--no-latency", "--keep-artifacts"]) == 0
    entry = json.loads((out / "results.json").read_text())["entries"]["uniform + admm@0.8"]
    artifact = str(next((out / "artifacts").rglob("manifest.json")).parent)
    corpus = args[args.index("--eval-corpus") + 1]
    scored = tmp_path / "scored.json"
    again = ["--corpus", corpus, "--seq-len", "64", "--windows", "2", "--out", str(scored)]
    assert artifact_perplexity.main([artifact] + again) == 0
    rows = json.loads(scored.read_text())["rows"]
    assert rows[artifact]["ppl"] == pytest.approx(entry["ppl"], rel=1e-6)  # the board's own measurement
    assert rows["dense"]["tokens"] == rows[artifact]["tokens"] == 126 and rows["dense"]["ppl"] > 1  # same windows
    assert artifact_perplexity.main([artifact] + again[:-1] + [str(scored), "--windows", "3"]) == 2  # other settings
    alone = tmp_path / "alone.json"
    assert artifact_perplexity.main([artifact] + again[:-1] + [str(alone), "--no-dense"]) == 0
    assert list(json.loads(alone.read_text())["rows"]) == [artifact]

    board_file = tmp_path / "board.json"
    assert artifact_perplexity.main([artifact] + again + ["--export-json", str(board_file)]) == 2  # not WikiText-2
    from pipeline.artifacts import read_manifest

    row = artifact_perplexity.board_record(read_manifest(artifact), 30.0, 2 * 2047, 2048)
    assert row == {"ratio": 0.8, "method": "uniform", "reform": "admm", "reform_samples": 3, "default": False,
                   "decoder_ratio": round(entry["achieved_ratio"], 6), "wikitext2_test_ppl": 30.0, "windows": 2}


def test_the_default_pipelines_artifact_is_marked_default():
    from types import SimpleNamespace

    from benchmarks.artifact_perplexity import board_record
    from pipeline.recipe import build_recipe

    def manifest(overrides, reformed_on=None):
        search = SimpleNamespace(metrics={"decoder_ratio": 0.79})
        reform = SimpleNamespace(status="done", options={"calibration": reformed_on} if reformed_on else {})
        recipe = build_recipe(None, {"search.ratio": 0.8, "validate.max_windows": 8, **overrides}).to_dict()
        return SimpleNamespace(recipe=recipe, record=lambda name: {"search": search, "reform": reform}[name])

    assert board_record(manifest({}), 30.0, 148 * 2047, 2048)["default"] is True  # validate settings do not matter
    assert board_record(manifest({"reform.samples": 7}), 30.0, 2047, 2048)["default"] is False
    assert board_record(manifest({"preset": "fast"}), 30.0, 2047, 2048)["default"] is False
    assert board_record(manifest({"search.method": "evolution"}), 30.0, 2047, 2048)["default"] is False  # 0.8: FLAP
    # versions made before 2026-12-08 recorded `sculpt reform ART --reform-samples N` in the stage alone: it tells
    samples = build_recipe().reform_windows()[0]
    restaged = board_record(manifest({"reform.samples": 7}, {"samples": samples, "seqlen": 512}), 30.0, 2047, 2048)
    assert (restaged["default"], restaged["reform_samples"]) == (True, samples)
    other = board_record(manifest({}, {"samples": 7, "seqlen": 512}), 30.0, 2047, 2048)
    assert (other["default"], other["reform_samples"]) == (False, 7)
