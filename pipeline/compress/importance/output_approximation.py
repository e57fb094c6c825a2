"""Output-approximation criteria for depth-2 units (our reading of GOA, Li, Dong & Lei 2024). Pure math.

The paper's formulas could not be retrieved; docs/goa.md derives these from its stated
objective (approximate each layer's output), and says what is ours.

An output projection W (out x n) sums the contributions of its units: a head's block of
head_dim input columns or an MLP channel's single column, c_u = W[:, u] x_u. Removing a set S
of units changes the output by sum_{u in S} c_u, whose expected squared norm over the
calibration tokens is

    E(S) = 1_S^T G 1_S,   G_uv = E[<c_u, c_v>] = sum_{i in u, j in v} (W^T W)_ij E[x_i x_j],

so G, the Gram matrix of the unit contributions, comes from W and the input second moment
alone. Its diagonal G_uu = E||c_u||^2 is the *second-moment* metric (for a channel,
E[a_j^2] ||W[:, j]||^2); its off-diagonal holds the *similarity* of units' outputs, which
greedy removal uses: two heads that write similar vectors cannot both go cheaply, two that
cancel can.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pipeline.compress.width.legal_widths import AttentionShape


def contribution_gram(weight: torch.Tensor, second_moment: torch.Tensor, unit_size: int = 1) -> torch.Tensor:
    """G_uv = E[<c_u, c_v>] for units of `unit_size` consecutive input columns of `weight`."""
    w = weight.detach().cpu().double()
    products = (w.T @ w) * second_moment.double()
    units = products.shape[0] // unit_size
    return products.reshape(units, unit_size, units, unit_size).sum(dim=(1, 3))


def second_moment_scores(weight: torch.Tensor, square_mean: torch.Tensor) -> torch.Tensor:
    """E||c_j||^2 = E[x_j^2] ||W[:, j]||^2 per input column: the error of removing channel j alone."""
    return square_mean.double() * weight.detach().cpu().double().pow(2).sum(dim=0)


def greedy_removal(gram: torch.Tensor, count: int, removed: Sequence[int] = (), group_size: int | None = None,
                   quota: int | None = None) -> list[int]:
    """Remove `count` more units one at a time, each adding the least output error given those gone.

    Removing u after the set S adds E(S + u) - E(S) = G_uu + 2 sum_{v in S} G_uv. With
    `quota`, at most that many units of each block of `group_size` consecutive units go in
    this call (same number of query heads out of every kept GQA group). Returns the order.
    """
    units = gram.shape[0]
    available = torch.ones(units, dtype=torch.bool)
    gone = list(removed)
    available[gone] = False
    cross = gram[:, gone].sum(dim=1) if gone else torch.zeros(units, dtype=gram.dtype)
    left = None if quota is None else torch.full((units // group_size,), quota)
    order: list[int] = []
    for _ in range(count):
        added = gram.diagonal() + 2 * cross
        added[~available] = float("inf")
        unit = int(torch.argmin(added))
        if not available[unit]:
            raise ValueError(f"cannot remove {count} units: only {len(order)} were removable")
        order.append(unit)
        available[unit] = False
        cross += gram[:, unit]
        if left is not None:
            block = unit // group_size
            left[block] -= 1
            if left[block] == 0:
                available[block * group_size:(block + 1) * group_size] = False
    return order


def removal_scores(order: Sequence[int], gram: torch.Tensor) -> torch.Tensor:
    """Scores that rank units by removal order (removed first = lowest); units never removed
    rank above all of them, among themselves by their own output energy G_uu."""
    units = gram.shape[0]
    energy = gram.diagonal().double()
    scores = units + energy / energy.abs().max().clamp_min(1e-30)  # in [units, units + 1]
    scores[list(order)] = torch.arange(len(order), dtype=torch.float64)
    return scores


def greedy_head_scores(head_gram: torch.Tensor, group_size: int,
                       shape: AttentionShape) -> tuple[torch.Tensor, torch.Tensor]:
    """(query-head scores, KV-group scores) from greedy removal down to a GQA-legal `shape`.

    Whole groups go first (their contributions summed), then the same number of query heads
    from every kept group, each step counting its similarity with everything already removed.
    """
    heads = head_gram.shape[0]
    groups = heads // group_size
    group_gram = head_gram.reshape(groups, group_size, groups, group_size).sum(dim=(1, 3))
    group_order = greedy_removal(group_gram, groups - shape.num_kv_heads)
    gone = [g * group_size + i for g in group_order for i in range(group_size)]
    per_group = group_size - shape.per_group
    head_order = greedy_removal(head_gram, per_group * shape.num_kv_heads, removed=gone, group_size=group_size,
                                quota=per_group or None)
    return removal_scores(gone + head_order, head_gram), removal_scores(group_order, group_gram)
