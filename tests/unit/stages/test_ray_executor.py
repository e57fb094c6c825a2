"""`search.executor: ray`: a pool of Ray actors gives the local executor's search, and without Ray the option
is one line naming the install."""

import builtins
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pipeline.compress.search.evolution import run_evolution
from pipeline.compress.search.executor import ScoringJob
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


def test_sculpt_joins_the_cluster_at_ray_address_with_its_token_and_leaves_it_running(tmp_path, monkeypatch):
    """The path a user with a cluster takes: `ray start --head` (token authentication on, Ray's default), then
    `sculpt run --executor ray` with RAY_ADDRESS and the token set; without the token, one line saying what to set.
    Ray reads its auth mode when imported, so the joining run is a `sculpt` subprocess, as a user's would be."""
    pytest.importorskip("ray")
    from click.testing import CliRunner

    from pipeline.cli import cli
    from tests.factories import tiny_checkpoint

    port = _free_port()
    address, token = f"127.0.0.1:{port}", secrets.token_hex(16)
    cluster_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    sessions = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={sessions}"], env=cluster_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        model = tiny_checkpoint(tmp_path / "model")
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 13}."
                                    for i in range(300)))
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text("preset: fast\nsearch:\n  method: evolution\n"
                          "  options: {population: 4, mutations: 2, crossovers: 1, parents: 2, generations: 1, "
                          "fitness_windows: 2, fitness_seqlen: 16, mlp_multiple: 8}\n")
        args = [str(recipe), "--model", str(model), "--calib-corpus", str(corpus), "--eval-corpus", str(corpus),
                "--calib-samples", "2", "--calib-seqlen", "32", "--ratio", "0.6", "--stages", "search", "--quiet"]
        local = CliRunner().invoke(cli, ["run", *args, "--out", str(tmp_path / "local")],
                                   env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)
        assert local.exit_code == 0, local.output
        _wait_for_port(port, head)
        joined = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "--out", str(tmp_path / "ray"),
                                 "--executor", "ray", "--actors", "2", "--cpus-per-actor", "1"],
                                env={**cluster_env, "RAY_ADDRESS": address}, capture_output=True, text=True,
                                timeout=300)
        assert joined.returncode == 0, joined.stderr[-3000:]
        manifests = [json.loads((tmp_path / out / "v0001" / "manifest.json").read_text()) for out in ("local", "ray")]
        search = [manifest["stages"][0] for manifest in manifests]
        assert search[1]["metrics"]["scored_by"]["cluster"] == "existing cluster"
        assert search[1]["metrics"]["scored_by"]["actors"] == 2
        specs = [json.loads((tmp_path / out / "v0001" / "search" / "arch.json").read_text()) for out in ("local", "ray")]
        assert specs[0] == specs[1] and search[0]["metrics"]["search_ppl"] == search[1]["metrics"]["search_ppl"]
        assert head.poll() is None  # the cluster is left running
        # this process imported Ray with token authentication off: one line naming what to set
        monkeypatch.setenv("RAY_ADDRESS", address)
        context = _context(tmp_path, "no-token")
        with pytest.raises(SculptError, match="RAY_AUTH_MODE=token"):
            ray_executor_factory(PoolShape(actors=1, cpus_per_actor=1))(ScoringJob(context.model, context.calibration,
                                                                                    0))
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and its services; idle workers exit on their own
        head.wait(timeout=60)
        shutil.rmtree(sessions, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start --head exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"no Ray head on port {port} after {seconds} s")
