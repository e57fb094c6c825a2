"""Reform-aware MLP channel selection: which channels a width keeps when the reform corrects the rest.

The paper's importance (obs_importance.py) scores each channel as if it alone were removed. A layer cut
to 60% loses its channels together, and the reform's least-squares correction of the down projection
W lets the kept channels stand in for the removed ones: a channel that others reconstruct can go
cheaply, one that nothing else reconstructs must stay. Greedy backward elimination with the optimal
brain surgeon update (the column updates of SparseGPT, applied to whole channels as ZipLM does) removes,
one at a time, the channel whose removal after the optimal correction of the others costs least,

    cost_j = w_j^T C w_j / [G^-1]_jj,   then   W <- W - w_j g_j^T / [G^-1]_jj,   G^-1 <- G^-1 - g_j g_j^T / [G^-1]_jj

with G the down projection's input second moment, g_j the j-th row of G^-1 and C the covariance of the loss
gradient at the MLP output (mlp_width_costs.py). The removal order ranks the channels for every width at once:
a width keeps the channels removed last. The scores are the removal costs made strictly increasing along
that order, so they rank as it does and weigh the search's mask mutations on the scale the importance does.

The functions are pure.
"""

from __future__ import annotations

import math

import torch

from pipeline.compress.reform.projection_corrections import ridged

COMPACT_EVERY = 128  # removed channels dropped from the working matrices this often (the work is quadratic)


def greedy_channel_scores(weight: torch.Tensor, gram: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    """One score per channel (float64, higher = removed later = kept by more widths): `weight` the down projection
    (hidden x channels), `gram` its input second moment, `fisher` the gradient covariance at its output."""
    work = weight.double().clone()
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(ridged(gram.to(work.device))))  # the reform's ridge
    weighted = fisher.double().to(work.device) @ work  # C W, updated alongside W
    channels = torch.arange(work.shape[1], device=work.device)
    removed, costs = [], []  # channels in removal order, and what each removal cost
    for step in range(work.shape[1]):
        if step % COMPACT_EVERY == 0:
            if step:
                work, weighted, inverse, channels = (work[:, alive], weighted[:, alive],
                                                     inverse[alive][:, alive], channels[alive])
            alive = torch.ones(channels.numel(), dtype=torch.bool, device=work.device)
        # [G^-1]_jj > 0 in exact arithmetic; a rounding-level one means a channel nothing reconstructs: keep it.
        # A live channel always ranks before a removed one, also when rounding made its cost nan.
        cost = (work * weighted).sum(dim=0) / inverse.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
        cost = torch.where(alive, cost.nan_to_num(nan=torch.finfo(torch.float64).max), math.inf)
        j = int(torch.argmin(cost))
        removed.append(int(channels[j]))
        costs.append(float(cost[j]))
        update = inverse[j] / inverse[j, j]
        work.addr_(work[:, j].clone(), update, alpha=-1)
        weighted.addr_(weighted[:, j].clone(), update, alpha=-1)
        inverse.addr_(inverse[:, j].clone(), update.clone(), alpha=-1)
        alive[j] = False
    scores = torch.empty(len(removed), dtype=torch.float64)
    scores[removed] = torch.tensor(increasing(costs), dtype=torch.float64)
    return scores


def increasing(costs: list[float]) -> list[float]:
    """`costs` in removal order made strictly increasing: each the largest so far, nudged just above its
    predecessor where that is not larger, so ranking by them is the removal order."""
    scores: list[float] = []
    for cost in costs:
        scores.append(max(cost, math.nextafter(scores[-1], math.inf)) if scores else max(cost, 0.0))
    return scores
