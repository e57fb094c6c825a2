"""The scoring seam: the search hands whole batches to its executor and gets the same result whatever order
the executor finishes them in."""

import random

from pipeline.compress.search.evolution import run_evolution
from pipeline.compress.search.executor import LocalExecutor
from tests.unit.compress.search.test_evolution import TRACKS, _context


class ShuffledExecutor(LocalExecutor):
    """Scores each batch in a shuffled order (as a pool of workers finishing out of order would), records the
    batches, and returns the scores in the batch's order."""

    def __init__(self, job, log):
        super().__init__(job)
        self.log, self.rng = log, random.Random(5)

    def score_batch(self, specs, on_done=lambda: None):
        order = list(range(len(specs)))
        self.rng.shuffle(order)
        scores = dict(zip(order, super().score_batch([specs[i] for i in order], on_done)))
        self.log.append(("score", len(specs)))
        return [scores[i] for i in range(len(specs))]

    def reformed_batch(self, specs, on_done=lambda: None):
        order = list(range(len(specs)))[::-1]
        scores = dict(zip(order, super().reformed_batch([specs[i] for i in order], on_done)))
        self.log.append(("reformed", len(specs)))
        return [scores[i] for i in range(len(specs))]

    def describe(self):
        return {"executor": "shuffled"}


def test_a_search_gives_its_executor_both_tracks_at_once_and_ignores_the_order_they_finish_in(tmp_path):
    local = run_evolution(_context(tmp_path, "local"), 0.7, TRACKS)
    log = []
    ctx = _context(tmp_path, "shuffled")
    ctx.executor = lambda job: ShuffledExecutor(job, log)
    shuffled = run_evolution(ctx, 0.7, TRACKS)

    assert shuffled.spec.to_dict() == local.spec.to_dict()
    assert shuffled.metrics["final_choice"] == local.metrics["final_choice"]
    assert shuffled.metrics["tracks"] == local.metrics["tracks"]
    assert local.metrics["scored_by"] == {"executor": "local"} and shuffled.metrics["scored_by"] == {
        "executor": "shuffled"}
    # every later generation of the two tracks is one batch: a population from each
    assert ("score", 2 * TRACKS.population) in log
    assert sum(n for kind, n in log if kind == "score") == shuffled.metrics["candidates_scored"]
    # the finalists are reformed as one batch, after the searches
    assert log[-1] == ("reformed", len(local.metrics["final_choice"]))
    assert [kind for kind, _ in log].count("reformed") == 1
