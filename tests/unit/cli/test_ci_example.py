"""The example CI workflow (examples/ci/sculpt-release.yml): valid YAML that gates on quality and regressions."""


import yaml

from tests import REPO_ROOT

WORKFLOW = REPO_ROOT / "examples" / "ci" / "sculpt-release.yml"


def steps():
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["sculpt"]["steps"]


def script(name_part: str) -> str:
    return next(step["run"] for step in steps() if name_part in step.get("name", ""))


def test_the_run_step_compares_with_the_last_release_and_fails_on_gates():
    run = script("validate")
    assert 'sculpt run "$RECIPE"' in run and "steps.baseline.outputs.flag" in run
    assert "exit $status" in run and "3)" in run  # the gate status is passed on, and named
    assert "--baseline releases/" in script("baseline")


def test_the_artifact_is_verified_and_kept_even_when_a_gate_fails():
    assert "sculpt verify" in script("Verify")
    upload = next(step for step in steps() if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"].startswith("always()")
