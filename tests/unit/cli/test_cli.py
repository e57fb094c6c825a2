"""The `sculpt` CLI end to end on a tiny model, and its one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from tests import REPO_ROOT
from tests.factories import light_validate_recipe, tiny_checkpoint

CORPUS = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(400))


def sculpt(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env={"SCULPT_DATA_DIR": None, **(env or {})},
                                catch_exceptions=False)
    return result


@pytest.fixture()
def tiny_run(tmp_path):
    model = tiny_checkpoint(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    recipe = light_validate_recipe(tmp_path)  # these tests are about the CLI, not timings
    args = ["run", str(recipe), "--model", str(model), "--calib-corpus", str(corpus), "--eval-corpus", str(corpus),
            "--calib-samples", "4", "--calib-seqlen", "32", "--seq-len", "64", "--max-windows", "2",
            "--ratio", "0.75", "--out", str(tmp_path / "artifacts"), "--quiet"]
    return tmp_path, args


def test_run_produces_a_verified_artifact_with_a_before_after_table(tiny_run):
    tmp_path, args = tiny_run
    result = sculpt(*args)
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "parameters" in result.output
    version = tmp_path / "artifacts" / "v0001"
    manifest = json.loads((version / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["search", "reform", "slice", "export", "kit", "build",
                                                       "validate"]
    assert manifest["stages"][3]["metrics"]["parity"]["passed"]
    assert manifest["stages"][5]["status"] == "skipped"  # no TensorRT here; the kit is written all the same
    assert manifest["stages"][-1]["metrics"]["params"] < manifest["stages"][-1]["metrics"]["params_source"]
    assert sculpt("verify", str(version)).exit_code == 0
    assert "search" in sculpt("inspect", str(version)).output


def test_running_the_same_recipe_again_resumes_without_redoing_stages(tiny_run):
    tmp_path, args = tiny_run
    sculpt(*args)
    again = sculpt(*args)
    assert again.exit_code == 0
    # search, reform (the fast preset's ADMM), slice, export, validate (build retries: TensorRT may have appeared)
    assert again.output.count("up to date") == 5
    assert not (tmp_path / "artifacts" / "v0002").exists()


# Runs `sculpt` in a child process whose `stage` function, once it has done its work (files written
# into the stage's working directory), SIGKILLs the process: no handler, no cleanup, as with `kill -9`.
KILLED_RUN = """
import os, signal, sys
from pipeline.cli import cli
from pipeline.stages import {stage} as stage
real = stage.{function}
def killed(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
stage.{function} = killed
cli.main(args=sys.argv[1:])
"""


@pytest.mark.parametrize("stage, function, done_before", [
    ("reform", "reform_sculpted", ["search"]),
    ("export", "export_checked", ["search", "reform", "slice"]),
])
def test_a_run_killed_inside_a_stage_resumes_from_that_stage_and_verifies(tiny_run, stage, function, done_before):
    tmp_path, args = tiny_run
    args = [*args, "--reform", "admm"]
    repo = REPO_ROOT
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("SCULPT_DATA_DIR", None)
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN.format(stage=stage, function=function), *args],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    version = tmp_path / "artifacts" / "v0001"
    manifest = json.loads((version / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"] if s["status"] == "done"] == done_before

    again = sculpt(*args)
    assert again.exit_code == 0, again.output
    for name in done_before:  # the completed stages are not redone
        assert f"{name}: up to date" in again.output
    assert f"{stage}: up to date" not in again.output
    assert not (tmp_path / "artifacts" / "v0002").exists()
    manifest = json.loads((version / "manifest.json").read_text())
    assert all(s["status"] in ("done", "skipped") for s in manifest["stages"])
    assert sculpt("verify", str(version)).exit_code == 0


def test_verify_fails_on_a_tampered_file(tiny_run):
    tmp_path, args = tiny_run
    sculpt(*args, "--stages", "search,reform,slice,validate")
    arch = tmp_path / "artifacts" / "v0001" / "search" / "arch.json"
    arch.write_text(arch.read_text().replace("uniform", "uniforn"))
    result = sculpt("verify", str(arch.parent.parent))
    assert result.exit_code == 1 and "search/arch.json" in result.output


def test_a_stage_rerun_with_its_own_settings_is_what_the_version_records(tiny_run):
    tmp_path, args = tiny_run
    assert sculpt(*args, "--stages", "search,reform,slice").exit_code == 0
    version = tmp_path / "artifacts" / "v0001"

    def recorded():
        manifest = json.loads((version / "manifest.json").read_text())
        copy = yaml.safe_load((version / "recipe.yaml").read_text())
        assert copy == manifest["recipe"]
        return manifest["recipe"], manifest["stages"][1]["options"]["calibration"]["samples"]

    assert recorded()[0]["reform"]["samples"] is None and recorded()[1] == 4  # the calibration's windows
    result = sculpt("reform", str(version), "--reform-samples", "6")
    assert result.exit_code == 0, result.output
    recipe, samples = recorded()
    assert recipe["reform"]["samples"] == 6 and samples == 6
    assert sculpt("slice", str(version)).exit_code == 0
    assert sculpt("verify", str(version)).exit_code == 0
    assert "up to date" in sculpt("reform", str(version)).output  # its recipe now says what made it

    refused = sculpt("reform", str(version), "--ratio", "0.5")  # a search setting: refused, nothing changes
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "search.ratio" in refused.output and f"sculpt search {version}" in refused.output
    assert recorded()[0] == recipe


@pytest.mark.parametrize("args, words", [
    (["run", "--model", "/no/such/model"], "not found"),
    (["run", "--ratio", "1.5"], "search.ratio"),
    (["run", "--ratio", "0"], "search.ratio"),
    (["run", "--data-dir", "/no/such/dir"], "does not exist"),
    (["run", "--method", "nonsense", "--model", "{model}"], "unknown method"),
    (["inspect", "/no/such/artifact"], "not a directory"),
    (["verify", "{tmp}"], "manifest"),
])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, args, words):
    model = tiny_checkpoint(tmp_path / "m")
    args = [a.format(model=model, tmp=tmp_path) for a in args]
    result = sculpt(*args, "--out", str(tmp_path / "a")) if args[0] == "run" else sculpt(*args)
    assert result.exit_code == 1
    assert words in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_unsupported_family_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    result = sculpt("run", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "a"), "--quiet",
                    "--calib-corpus", "pydoc", "--eval-corpus", "pydoc")
    assert result.exit_code == 1 and "'gpt2' is not supported" in result.output


def test_help_teaches_the_pipeline():
    output = sculpt("--help").output
    for word in ("search", "reform", "slice", "validate", "sculpt run"):
        assert word in output
    assert "--ratio" in sculpt("run", "--help").output
    assert "uniform" in sculpt("methods").output
