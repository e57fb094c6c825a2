"""`sculpt run --reform ...` on a tiny checkpoint: the reform stage fits, records, and slice applies it."""

import json

import pytest
from safetensors.torch import load_file

from tests.unit.cli.test_cli import sculpt, tiny_run  # noqa: F401  (tiny_run is a fixture)


@pytest.fixture()
def reform_run(tiny_run):  # noqa: F811
    tmp_path, args = tiny_run
    return tmp_path / "artifacts" / "v0001", [*args, "--reform-samples", "6"]


def test_run_with_admm_reform_records_the_fit_and_slices_the_reformed_weights(reform_run):
    version, args = reform_run
    result = sculpt(*args, "--reform", "admm", "--reform-iterations", "12")
    assert result.exit_code == 0, result.output
    report = json.loads((version / "reform" / "report.json").read_text())
    assert report["method"] == "admm" and report["iterations"] == 12 and report["sequential"] is True
    assert report["calibration"]["samples"] == 6 and report["tokens"] == 6 * 32
    assert report["projections"] and all(p["error_after"] < p["error_before"] for p in report["projections"])
    manifest = json.loads((version / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["reform"]["status"] == "done" and stages["reform"]["metrics"]["summary"]
    assert "reform/weights.safetensors" in stages["slice"]["metrics"]["weights_applied"]
    reformed, sliced = load_file(version / "reform" / "weights.safetensors"), load_file(
        next((version / "slice" / "model").glob("*.safetensors")))
    assert all((sliced[name] == tensor).all() for name, tensor in reformed.items())
    assert sculpt("verify", str(version)).exit_code == 0


def test_rerunning_reform_with_bias_compensation_gives_the_sliced_model_output_biases(reform_run):
    version, args = reform_run
    assert sculpt(*args, "--reform", "least-squares", "--reform-sequential", "false").exit_code == 0
    assert json.loads((version / "reform" / "report.json").read_text())["sequential"] is False
    result = sculpt("reform", str(version), "--reform", "bias", "--quiet")
    assert result.exit_code == 0, result.output
    assert sculpt("slice", str(version), "--quiet").exit_code == 0
    config = json.loads((version / "slice" / "model" / "config.json").read_text())
    assert any(layer.get("attention_out_bias") or layer.get("mlp_out_bias") for layer in config["sculpt_layers"])
    biases = [n for n in load_file(version / "reform" / "weights.safetensors") if n.endswith("bias")]
    assert biases


def test_a_bad_reform_method_is_one_line_naming_the_choices(reform_run):
    _, args = reform_run
    result = sculpt(*args, "--reform", "lstsq")
    assert result.exit_code == 2 and "least-squares" in result.output


def test_reform_bias_fits_an_intercept_that_lowers_every_projection_error(reform_run):
    version, args = reform_run
    # on the dense model's activations, each projection's fit with an intercept is a superset of the one without
    plain = ["--reform", "least-squares", "--reform-sequential", "false"]
    assert sculpt(*args, *plain).exit_code == 0
    without = json.loads((version / "reform" / "report.json").read_text())["projections"]
    result = sculpt("reform", str(version), *plain, "--reform-bias", "true", "--quiet")
    assert result.exit_code == 0, result.output
    assert sculpt("slice", str(version), "--quiet").exit_code == 0
    manifest = json.loads((version / "manifest.json").read_text())
    assert {s["name"]: s for s in manifest["stages"]}["reform"]["options"]["bias"] is True
    with_bias = json.loads((version / "reform" / "report.json").read_text())["projections"]
    assert [(p["position"], p["module"]) for p in with_bias] == [(p["position"], p["module"]) for p in without]
    assert all(b["error_after"] <= a["error_after"] * (1 + 1e-9) for a, b in zip(without, with_bias))
    assert sum(b["error_after"] for b in with_bias) < sum(a["error_after"] for a in without)
    config = json.loads((version / "slice" / "model" / "config.json").read_text())
    biased = sum(bool(layer.get("attention_out_bias")) + bool(layer.get("mlp_out_bias")) for layer in config["sculpt_layers"])
    assert biased == len(with_bias)  # one bias per projection that lost inputs, none elsewhere
