"""The reformed final choice: which of the search's finalists ships, judged as the reform stage will ship it.

Each finalist (every track's best parents and its best seeds of each kind) is sliced, reformed with the
reform stage's default sequential ADMM on the calibration windows before the last `final_windows`, and scored
on those last windows, which neither the fitness nor the reform saw; or, with `final_seqlen`, reformed on every
calibration window and scored on longer windows drawn apart from them (`final_windows` above).

Finalists whose reformed score is within `tolerance` of the best are tied, and the tie goes to the lowest search
fitness (perplexity before any reform): the structure that needs the least correction from calibration text.
On SmolLM2 at 0.8 the uniform seed scored 1.3% better after reform than the evolved parent, yet it is the
parent that holds up on text unlike the calibration's (pydoc 20.98 against 37.64; docs/search.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.reform.sequential_reform import ReformSettings, reform_sculpted
from pipeline.errors import SculptError
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, BaseDims

from .generations import Candidate, EvolutionOptions, EvolutionSearch
from .genome import genome_ratio, genome_spec
from .seeds import SEED_KINDS


@dataclass
class FinalChoice:
    track: str
    candidate: Candidate
    reformed_ppl: float
    rows: list[dict]  # every finalist: track, origin, search and reformed perplexity, ratio, chosen


def reformed_choice(searches: dict[str, EvolutionSearch], per_track: int, base: BaseDims, progress: bool,
                    score: Callable[[list[ArchSpec], Callable[[], None]], list[float]],
                    tolerance: float, out_bias: bool = False) -> FinalChoice:
    """The finalist with the lowest score (perplexity after reform, on held-out windows) among each track's best
    `per_track` candidates and seeds of each kind (uniform, allocated, flap: a seed is kept when nothing beats it; the seed
    the fitness ranks first need not be the best after reform). Scores within `tolerance` (relative) of the lowest
    are tied; a tie goes to the lowest search fitness, then to the earlier finalist. `score` gets every finalist
    at once (an executor reforms them in parallel; the second argument is called as each is done) and returns
    their scores in order. With `out_bias` (bias compensation), every projection that lost inputs has an output
    bias, which the reform refits with the kept columns."""
    finalists, keys = [], set()
    for track, search in searches.items():
        ranked = [(f"parent {i + 1}", c) for i, c in enumerate(search.parents[:per_track])]
        for kind in SEED_KINDS:
            seeds = [c for c in search.seeds if search.seed_kinds[c.key] == kind]
            ranked += [(f"{kind} seed {i + 1}", c) for i, c in enumerate(seeds[:per_track])]
        for origin, candidate in ranked:
            if candidate.key not in keys:
                keys.add(candidate.key)
                finalists.append((track, origin, candidate))
    with tqdm(total=len(finalists), desc="final choice", unit="cand", disable=not progress) as bar:
        scores = score([genome_spec(candidate.genome, base, out_bias=out_bias) for _, _, candidate in finalists],
                       bar.update)
    rows = [{"track": track, "origin": origin, "search_ppl": candidate.ppl, "reformed_ppl": reformed,
             "ratio": round(genome_ratio(candidate.genome, base, out_bias), 6), "chosen": False}
            for (track, origin, candidate), reformed in zip(finalists, scores, strict=True)]
    lowest = min(row["reformed_ppl"] for row in rows)
    tied = [i for i, row in enumerate(rows) if row["reformed_ppl"] <= lowest * (1 + tolerance)]
    best = min(tied, key=lambda i: rows[i]["search_ppl"])  # the first of equal fitness
    rows[best]["chosen"] = True
    return FinalChoice(rows[best]["track"], finalists[best][2], rows[best]["reformed_ppl"], rows)


def reformed_perplexity(model: torch.nn.Module, spec: ArchSpec, fit: torch.Tensor, held: torch.Tensor,
                        batch_size: int = 1) -> float:
    """The perplexity on the `held` windows of `spec` after `reformed_model` on the `fit` windows."""
    return calibration_perplexity(reformed_model(model, spec, fit, batch_size), held, batch_size)


def reformed_model(model: torch.nn.Module, spec: ArchSpec, fit: torch.Tensor, batch_size: int = 1) -> torch.nn.Module:
    """`spec` sliced from `model` and reformed as the reform stage does by default (sequential ADMM, the paper's
    rho and iterations) on the `fit` windows."""
    sculpted = slice_model(model, spec)
    reform_sculpted(sculpted, model, spec, fit, ReformSettings("admm"), batch_size, progress=False)
    return sculpted


def final_windows(calibration: torch.Tensor, options: EvolutionOptions,
                  held_out: Callable[[int, int], torch.Tensor] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For the reformed final choice, the windows the finalists are reformed on and the windows they are scored
    on: with `final_seqlen`, every calibration window and `final_windows` windows of that length from `held_out`;
    else the calibration windows before the last `final_windows` (whole) and those last ones. None without a
    reformed final choice."""
    if options.final_choice != "reformed":
        return None
    if options.final_seqlen:
        if held_out is None:
            raise SculptError("final_seqlen scores the finalists on windows drawn apart from the calibration, which "
                              "only the search stage supplies: run the method through `sculpt run`/`sculpt search`, "
                              "or set final_seqlen to 0")
        return calibration, held_out(options.final_windows, options.final_seqlen)
    count = calibration.shape[0]
    if options.fitness_windows + options.final_windows > count:
        raise SculptError(f"the reformed final choice scores the finalists on the last {options.final_windows} "
                          f"calibration windows, which must not overlap the {options.fitness_windows} fitness windows, "
                          f"and the calibration has {count}: raise --calib-samples or lower the final_windows option")
    return calibration[: count - options.final_windows], calibration[count - options.final_windows:]
