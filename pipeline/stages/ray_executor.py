"""`search.executor: ray`: a search's candidates scored on a pool of Ray actors (docs/scale.md).

Each actor holds the scoring job once (the dense model and the calibration windows, put in Ray's object store
once and fetched by every actor) and scores what it is sent with the code the local run uses
(`LocalExecutor`), on `cpus_per_actor` torch threads, or on the GPU Ray gives it. The pool hands the next
candidate of a batch to whichever actor is free and puts each score back at its candidate's place, so the
search sees its batch's order, never the order the actors finish in: the result is the local executor's.

The cluster: the one at `$RAY_ADDRESS` (`auto`: the one `ray start` made on this machine), else a local instance
started here with as many CPUs as the pool reserves. What this starts it stops: the actors always, the connection to
Ray (and so a local instance) only when this opened it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..compress.search.candidate_scorer import CandidateScore
from ..compress.search.executor import ExecutorFactory, LocalExecutor, ScoringJob
from ..errors import SculptError
from ..models.spec import ArchSpec
from . import needs_extra

WHAT = "--executor ray (search.executor: ray)"


def import_ray() -> Any:
    """The ray module; MissingExtra (one line: pip install 'llm-sculpt[ray]') where it is not installed."""
    with needs_extra(WHAT, "ray"):
        import ray
    return ray


@dataclass(frozen=True)
class PoolShape:
    actors: int | None  # None: as many as the cluster's CPUs (or GPUs) allow
    cpus_per_actor: int = 1
    device: str = "cpu"  # the recipe's model.device: "cuda..." gives each actor one GPU of its own

    @property
    def gpus_per_actor(self) -> int:
        return 1 if self.device.startswith("cuda") else 0


def ray_executor_factory(shape: PoolShape) -> ExecutorFactory:
    """What the search stage gives the method: checks now that Ray is installed, starts nothing until a search
    asks for its executor."""
    import_ray()
    return lambda job: RayExecutor(job, shape)


class ScoringActor:
    """One worker of the pool: the job, held once, scored with the local code."""

    def __init__(self, job: ScoringJob, threads: int, device: str) -> None:
        torch.set_num_threads(threads)
        if device != "cpu":  # Ray shows the actor only its own GPU, as cuda:0
            job = dataclasses.replace(job, model=job.model.to("cuda"))
        self.local = LocalExecutor(job)

    def ready(self) -> bool:
        return True

    def peak_rss(self) -> int:
        """This actor's peak resident memory in bytes (Linux reports kilobytes)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def score(self, spec: ArchSpec) -> CandidateScore:
        return self.local.score_batch([spec])[0]

    def reformed(self, spec: ArchSpec) -> float:
        return self.local.reformed_batch([spec])[0]


class RayExecutor:
    """A pool of `ScoringActor`s behind the `SearchExecutor` interface."""

    def __init__(self, job: ScoringJob, shape: PoolShape) -> None:
        self.ray, self.shape = import_ray(), shape
        self.opened = not self.ray.is_initialized()
        self.started_local = False
        self.actors: list[Any] = []
        if self.opened:
            self._connect()
        try:
            count = self._pool_size()
            job_ref = self._put(job)
            remote = self.ray.remote(ScoringActor).options(num_cpus=shape.cpus_per_actor,
                                                           num_gpus=shape.gpus_per_actor)
            device = "cuda" if shape.gpus_per_actor else "cpu"
            self.actors = [remote.remote(job_ref, shape.cpus_per_actor, device) for _ in range(count)]
            self.ray.get([actor.ready.remote() for actor in self.actors])  # loaded, or the error now
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        """The cluster at $RAY_ADDRESS (`auto`: the one `ray start` made on this machine), else a new local
        instance of this run's own: never another run's private instance."""
        address = os.environ.get("RAY_ADDRESS")
        if address:
            try:
                self.ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError) as err:
                if "uthenticat" in f"{err} {err.__cause__}":  # Ray >= 2.5x: `ray start` turns token auth on
                    raise SculptError(f"the Ray cluster at RAY_ADDRESS={address} wants its auth token: set "
                                      "RAY_AUTH_MODE=token here, with the cluster's token in ~/.ray/auth_token or "
                                      "RAY_AUTH_TOKEN (docs/scale.md)") from None
                raise SculptError(f"no Ray cluster answers at RAY_ADDRESS={address}: start it (`ray start --head`) "
                                  "or unset RAY_ADDRESS to start a local instance") from None
            return
        cpus = (self.shape.actors or 0) * self.shape.cpus_per_actor or os.cpu_count() or 1
        self.ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        self.started_local = True

    def _pool_size(self) -> int:
        """The actors asked for, or as many as the cluster holds; an error when it cannot hold them."""
        resources = self.ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        shape = self.shape
        fits = gpus if shape.gpus_per_actor else cpus // shape.cpus_per_actor
        if shape.gpus_per_actor:
            fits = min(fits, cpus // shape.cpus_per_actor)
        count = shape.actors or fits
        if count < 1 or count > fits:
            need = f"{count or 1} actor(s) x {shape.cpus_per_actor} CPU" + (" + 1 GPU" if shape.gpus_per_actor else "")
            raise SculptError(f"the Ray cluster has {cpus} CPU(s) and {gpus} GPU(s), the pool needs {need}: lower "
                              "--actors or --cpus-per-actor, or add nodes")
        return count

    def _put(self, job: ScoringJob) -> Any:
        """The job in the object store, its tensors on the CPU (an actor moves them to its own GPU)."""
        device = next(job.model.parameters()).device
        if device.type == "cpu":
            return self.ray.put(job)
        job.model.to("cpu")
        try:
            return self.ray.put(job)
        finally:
            job.model.to(device)

    def score_batch(self, specs: list[ArchSpec], on_done: Callable[[], None] = lambda: None) -> list[CandidateScore]:
        return self._map("score", specs, on_done)

    def reformed_batch(self, specs: list[ArchSpec], on_done: Callable[[], None] = lambda: None) -> list[float]:
        return self._map("reformed", specs, on_done)

    def _map(self, method: str, specs: list[ArchSpec], on_done: Callable[[], None]) -> list[Any]:
        """Each spec to the next free actor (Ray's ActorPool); the results in the order of `specs`."""
        from ray.util import ActorPool

        results = []
        for result in ActorPool(self.actors).map(lambda actor, spec: getattr(actor, method).remote(spec), specs):
            results.append(result)
            on_done()
        return results

    def describe(self) -> dict:
        cluster = "local instance" if self.started_local else "existing cluster"
        peak = max(self.ray.get([actor.peak_rss.remote() for actor in self.actors]), default=0)
        return {"executor": "ray", "actors": len(self.actors), "cpus_per_actor": self.shape.cpus_per_actor,
                "gpus_per_actor": self.shape.gpus_per_actor, "cluster": cluster, "ray": self.ray.__version__,
                "peak_rss_per_actor_mib": round(peak / 2**20, 1)}

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.opened and self.ray.is_initialized():
            self.ray.shutdown()
