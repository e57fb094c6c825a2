"""Presets: what `sculpt run` does with no options, what --preset fast does, and how options override them."""

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.compress import METHODS
from pipeline.errors import SculptError
from pipeline.presets import FAST, QUALITY
from pipeline.recipe import build_recipe
from pipeline.workflow import run_pipeline
from tests.factories import tiny_checkpoint
from tests.unit.cli.test_cli import CORPUS


def test_no_options_give_the_quality_pipeline_search_and_admm_reform():
    recipe = build_recipe()
    assert recipe.preset == "quality" and recipe.search.ratio == 0.8
    assert recipe.reform.method == "admm"
    assert (recipe.reform.samples, recipe.data.calib_samples) == (512, 32)  # reform: the paper's 262k tokens
    assert build_recipe(overrides={"reform.samples": 16}).reform.samples == 16
    assert build_recipe(overrides={"preset": "fast"}).reform.samples is None  # fast: the search's windows


@pytest.mark.parametrize("ratio, method", [(0.9, "flap"), (0.8, "flap"), (0.79, "evolution"), (0.5, "evolution")])
def test_the_quality_preset_runs_the_search_measured_best_at_the_ratio(ratio, method):
    recipe = build_recipe(overrides={"search.ratio": ratio})
    assert recipe.search.method == method and recipe.reform.samples == 512
    assert recipe.search.options == (QUALITY.settings["search.options"] if method == "evolution" else {})
    assert build_recipe(recipe.to_dict()) == recipe  # the recorded recipe names its method: no ratio decides again


def test_naming_the_search_or_its_options_keeps_the_presets_own_search_at_every_ratio():
    named = build_recipe(overrides={"search.method": "evolution"})
    assert (named.search.method, named.search.options) == ("evolution", QUALITY.settings["search.options"])
    constrained = build_recipe(overrides={"search.options.latency_speedup": 1.5})  # an option of the search's
    assert constrained.search.method == "evolution" and constrained.search.options["latency_speedup"] == 1.5
    assert build_recipe(overrides={"search.method": "goa", "search.ratio": 0.9}).search.method == "goa"
    assert build_recipe(overrides={"search.executor": "ray"}).search.method == "evolution"  # Ray runs its candidates


def test_the_fast_preset_is_uniform_widths_with_admm_reform():
    recipe = build_recipe(overrides={"preset": "fast"})
    assert (recipe.search.method, recipe.search.options, recipe.reform.method) == ("uniform", {}, "admm")
    assert FAST.settings["search.method"] == "uniform"


def test_options_override_the_preset_key_by_key():
    other = build_recipe(overrides={"search.method": "goa"})  # the quality search's options are not goa's
    assert (other.preset, other.search.method, other.search.options, other.reform.method) == \
        ("quality", "goa", {}, "admm")
    merged = build_recipe(overrides={"search.options.latency_speedup": 1.5, "reform.method": "none"})
    assert merged.search.options == {**QUALITY.settings["search.options"], "latency_speedup": 1.5}
    assert merged.reform.method == "none"
    from_file = build_recipe({"preset": "fast", "reform": {"method": "least-squares"}}, {"search.ratio": 0.7})
    assert (from_file.search.method, from_file.reform.method, from_file.search.ratio) == \
        ("uniform", "least-squares", 0.7)


def test_a_recorded_recipe_rebuilds_to_itself_and_an_unknown_preset_names_the_choices():
    recipe = build_recipe(overrides={"preset": "fast", "search.method": "flap"})
    assert build_recipe(recipe.to_dict()) == recipe
    with pytest.raises(SculptError, match="quality, fast"):
        build_recipe(overrides={"preset": "best"})


def test_the_manifest_records_the_preset_and_the_settings_it_resolved_to(tmp_path):
    model = tiny_checkpoint(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    result = CliRunner().invoke(cli, [
        "run", "--preset", "fast", "--method", "magnitude", "--model", str(model), "--calib-corpus", str(corpus),
        "--eval-corpus", str(corpus), "--calib-samples", "4", "--calib-seqlen", "32", "--ratio", "0.7",
        "--stages", "search,reform", "--out", str(tmp_path / "art"), "--quiet"], env={"SCULPT_DATA_DIR": None},
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "art" / "v0001" / "manifest.json").read_text())
    assert manifest["recipe"]["preset"] == "fast"
    assert manifest["recipe"]["search"]["method"] == "magnitude"
    assert manifest["recipe"]["reform"]["method"] == "admm"  # from the preset
    assert [stage["name"] for stage in manifest["stages"]] == ["search", "reform"]
    assert manifest["stages"][1]["status"] == "done"


@pytest.mark.parametrize("reform", ["admm", "least-squares", "bias"])
def test_every_baseline_accepts_each_reform(reform, tmp_path):
    model = tiny_checkpoint(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    for method in sorted(set(METHODS) - {"evolution"}):  # the search has its own tests with a reform
        recipe = build_recipe(overrides={
            "preset": "fast", "model.source": str(model), "data.calibration": str(corpus),
            "data.evaluation": str(corpus), "data.calib_samples": 8, "data.calib_seqlen": 32,
            "search.method": method, "search.ratio": 0.9 if method.startswith("attn") else 0.75,
            "reform.method": reform, "output": str(tmp_path / method)})
        artifact = run_pipeline(recipe, stages=["search", "reform", "slice"], progress=False)
        stages = {stage.name: stage for stage in artifact.manifest.stages}
        assert stages["slice"].status == "done", method
        if stages["reform"].status == "skipped":  # a depth method leaves no output projection with cut inputs
            assert "nothing to reform" in stages["reform"].reason, method
        else:
            assert stages["reform"].status == "done", method
            assert stages["reform"].metrics["method"] == reform


def test_run_help_teaches_the_presets_and_a_stage_of_an_artifact_takes_none():
    text = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--preset [quality|fast]" in text and "Default: quality" in " ".join(text.split())
    assert "--preset" not in CliRunner().invoke(cli, ["reform", "--help"]).output  # its recipe is resolved already
