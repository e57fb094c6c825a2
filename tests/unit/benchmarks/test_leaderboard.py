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
