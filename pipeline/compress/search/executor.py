"""The one seam between the search and where its candidates are scored.

The search loop (generations.py, evolution.py, final_choice.py) hands every batch of candidates to a
`SearchExecutor` and gets their scores back in the order it gave them; it never learns where they ran.
`LocalExecutor` scores them here, one after another, with one `CandidateScorer`; the Ray executor
(pipeline/stages/ray_executor.py) fans them out over a pool of actors that each hold a `ScoringJob`. Because
each candidate's score depends only on the job and the candidate (the prefix cache changes what is computed,
not the result), which worker scores it and when it finishes change nothing the search sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from pipeline.models.spec import ArchSpec

from .candidate_scorer import CandidateScore, CandidateScorer
from .compensation import InputMeans
from .final_choice import reformed_perplexity


@dataclass
class ScoringJob:
    """What every worker holds once: the dense source model, the fitness windows and, for the reformed final
    choice, the windows its finalists are reformed on and scored on."""

    model: torch.nn.Module
    fitness: torch.Tensor  # [n, L] token windows every candidate is scored on
    cache_bytes: int  # the prefix cache of hidden states, per worker
    final: tuple[torch.Tensor, torch.Tensor] | None = None  # (fit, held) windows of the reformed final choice
    batch_size: int = 1  # windows per forward pass in the final choice's reform and perplexity
    means: InputMeans | None = None  # the dense inputs' means of the output projections, for bias compensation


class SearchExecutor(Protocol):
    """Scores batches of candidates; results come back in the order of `specs`, whatever order they finish in.
    `on_done` is called once per finished candidate (progress bars)."""

    def score_batch(self, specs: list[ArchSpec], on_done: Callable[[], None] = ...) -> list[CandidateScore]:
        """Each spec's calibration perplexity on the fitness windows, and what it cost."""
        ...

    def reformed_batch(self, specs: list[ArchSpec], on_done: Callable[[], None] = ...) -> list[float]:
        """Each spec's perplexity on the held windows after ADMM reform on the fit windows (final_choice.py)."""
        ...

    def close(self) -> None:
        """Release the workers (and whatever the executor started)."""
        ...

    def describe(self) -> dict:
        """What ran the scoring, for the stage's metrics: {"executor": "local"} or the pool's shape."""
        ...


# Builds the executor for a job; the search stage picks it from the recipe (`search.executor`).
ExecutorFactory = Callable[[ScoringJob], SearchExecutor]


class LocalExecutor:
    """Scores every candidate in this process, in order."""

    def __init__(self, job: ScoringJob) -> None:
        self.job = job
        self.scorer = CandidateScorer(job.model, job.fitness, job.cache_bytes, job.means)

    def score_batch(self, specs: list[ArchSpec], on_done: Callable[[], None] = lambda: None) -> list[CandidateScore]:
        scores = []
        for spec in specs:
            scores.append(self.scorer.score(spec))
            on_done()
        return scores

    def reformed_batch(self, specs: list[ArchSpec], on_done: Callable[[], None] = lambda: None) -> list[float]:
        if self.job.final is None:
            raise ValueError("this scoring job has no final-choice windows")
        fit, held = self.job.final
        scores = []
        for spec in specs:
            scores.append(reformed_perplexity(self.job.model, spec, fit, held, self.job.batch_size))
            on_done()
        return scores

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"executor": "local"}
