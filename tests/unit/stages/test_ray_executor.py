"""`search.executor: ray`: a pool of Ray actors gives the local executor's search, and without Ray the option
is one line naming the install."""

import builtins
import json

import pytest

from pipeline.compress.search.evolution import run_evolution
from pipeline.errors import SculptError
from pipeline.stages import MissingExtra
from pipeline.stages.ray_executor import PoolShape, ray_executor_factory
from tests.unit.compress.search.test_evolution import TRACKS, _context


def test_two_ray_actors_give_the_local_search_candidate_for_candidate(tmp_path):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    local_ctx, ray_ctx = _context(tmp_path, "local"), _context(tmp_path, "ray")
    local = run_evolution(local_ctx, 0.7, TRACKS)
    ray_ctx.executor = ray_executor_factory(PoolShape(actors=2, cpus_per_actor=1))
    pooled = run_evolution(ray_ctx, 0.7, TRACKS)

    assert pooled.metrics["scored_by"]["executor"] == "ray" and pooled.metrics["scored_by"]["actors"] == 2
    assert pooled.metrics["scored_by"]["cluster"] == "local instance"
    assert not ray.is_initialized()  # the instance it started is shut down
    assert pooled.spec.to_dict() == local.spec.to_dict()
    # every generation of both tracks: the same candidates, the same scores, in the same order
    for track in ("evolution.json", "evolution-skip-free.json"):
        a, b = (json.loads((ctx.state.folder / track).read_text()) for ctx in (local_ctx, ray_ctx))
        assert a["seen"] == b["seen"] and list(a["seen"]) == list(b["seen"])
        assert a["parents"] == b["parents"] and a["rng"] == b["rng"]
    assert pooled.metrics["final_choice"] == local.metrics["final_choice"]  # the finalists after ADMM, too


def test_executor_ray_without_ray_is_one_line_naming_the_install(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "ray" else object())
    with pytest.raises(MissingExtra) as caught:
        ray_executor_factory(PoolShape(actors=2))
    message = str(caught.value)
    assert "\n" not in message and "pip install 'llm-sculpt[ray]'" in message and "--executor ray" in message
    assert isinstance(caught.value, SculptError)


def test_sculpt_run_executor_ray_without_ray_stops_before_making_an_artifact(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import cli
    from tests.factories import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "model")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "ray" else object())
    result = CliRunner().invoke(cli, ["run", "--model", str(model), "--method", "evolution", "--executor", "ray",
                                      "--out", str(tmp_path / "art"), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'llm-sculpt[ray]'" in lines[0], result.output
    assert not (tmp_path / "art").exists()
