"""A base install (no `onnx` extra): `sculpt run` skips export and build with the install command and
validates on torch; commands that need the extra fail in one line naming it.

With the extra installed (the usual test venv) the fixture hides onnx, onnxscript and onnxruntime from
imports; `make test` also runs this file in .venv-base, a real install without the extra
(SCULPT_BASE_INSTALL=1), where nothing is hidden.
"""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.stages import EXTRAS, missing_modules
from tests import REPO_ROOT
from tests.factories import light_validate_recipe, tiny_checkpoint

INSTALL = "pip install 'llm-sculpt[onnx]'"
CORPUS = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(400))
BASE_INSTALL = bool(os.environ.get("SCULPT_BASE_INSTALL"))


@pytest.fixture()
def without_onnx(monkeypatch):
    """The modules of the onnx extra cannot be imported (a None in sys.modules stops both import and find_spec)."""
    for module in EXTRAS["onnx"]:
        monkeypatch.setitem(sys.modules, module, None)
    assert missing_modules("onnx") == list(EXTRAS["onnx"])


def sculpt(*args):
    return CliRunner().invoke(cli, list(args), env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)


@pytest.fixture()
def tiny_args(tmp_path):
    model = tiny_checkpoint(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    return ["run", str(light_validate_recipe(tmp_path)), "--model", str(model), "--calib-corpus", str(corpus),
            "--eval-corpus", str(corpus), "--calib-samples", "4", "--calib-seqlen", "32", "--seq-len", "64",
            "--max-windows", "2", "--ratio", "0.8", "--out", str(tmp_path / "artifacts"), "--quiet"]


def test_run_skips_export_and_build_naming_the_install_and_validates_on_torch(without_onnx, tiny_args, tmp_path):
    result = sculpt(*tiny_args)
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "Traceback" not in result.output
    version = tmp_path / "artifacts" / "v0001"
    stages = {s["name"]: s for s in json.loads((version / "manifest.json").read_text())["stages"]}
    assert [name for name, s in stages.items() if s["status"] == "done"] == ["search", "reform", "slice", "validate"]
    for name in ("export", "build"):
        assert stages[name]["status"] == "skipped" and INSTALL in stages[name]["reason"]
        assert not (version / name).exists()
    report = json.loads((version / "validate" / "report.json").read_text())
    assert report["backends"]["torch"] == "measured"
    assert "onnxruntime" not in report["sculpted"]["by_backend"]
    assert INSTALL in report["backends"]["onnxruntime"] and "sculpt export" not in report["backends"]["onnxruntime"]
    assert sculpt("verify", str(version)).exit_code == 0
    assert "skipped" in sculpt("inspect", str(version)).output

    # the export stage alone: one line naming the install command, exit 1, the artifact untouched
    export = sculpt("export", str(version))
    assert export.exit_code == 1
    assert export.output.strip().count("\n") == 0 and INSTALL in export.output, export.output
    assert json.loads((version / "manifest.json").read_text())["stages"] == list(stages.values())


@pytest.mark.parametrize("command", [["run", "--stages", "search,export"], ["lint", "."], ["build", "."]])
def test_a_command_that_needs_the_extra_is_one_line_naming_the_install(without_onnx, tiny_args, tmp_path, command):
    args = [*tiny_args, *command[1:]] if command[0] == "run" else [command[0], str(tmp_path)]
    result = sculpt(*args)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and INSTALL in result.output, result.output
    assert not (tmp_path / "artifacts").exists()  # a named stage that cannot run fails before any work


@pytest.mark.skipif(not BASE_INSTALL, reason="for the base install only: `make test` runs it in .venv-base")
def test_the_base_install_really_lacks_the_extra_and_the_installed_sculpt_says_so(tmp_path):
    assert missing_modules("onnx") == list(EXTRAS["onnx"])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "lint", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and INSTALL in done.stderr and "Traceback" not in done.stderr, done.stderr
