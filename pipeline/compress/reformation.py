"""Closed-form corrections of a layer whose input units were pruned (o_proj, down_proj).

With W (out x in) the original weights, X the layer's inputs and K the kept input units,
the pruned layer computes W[:, K] X_K. These corrections change the kept weights (or add a
bias) so the output stays close to W X, using only the second moment G = E[x x^T]
and the mean E[x] of the inputs from calibration data. Pure math, float64.
"""

from __future__ import annotations

import torch

DAMPING = 1e-6  # relative ridge on G_KK: keeps the solve well posed when kept inputs are collinear


def least_squares_refit(weight: torch.Tensor, second_moment: torch.Tensor, kept: torch.Tensor,
                        damping: float = DAMPING) -> torch.Tensor:
    """argmin over W' of E||W' x_K - W x||^2:  W' = W G[:, K] (G_KK + lambda I)^-1, shape (out, |K|)."""
    g = second_moment.double()
    g_kk = g[kept][:, kept]
    ridge = damping * g_kk.diagonal().mean().clamp_min(1e-12) * torch.eye(len(kept), dtype=g.dtype)
    rhs = weight.double() @ g[:, kept]  # (out, |K|)
    # Solve (G_KK + lambda I) W'^T = rhs^T; G_KK is symmetric positive definite with the ridge.
    return torch.linalg.solve(g_kk + ridge, rhs.T).T


def compensation_bias(weight: torch.Tensor, mean_input: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """FLAP-style bias: the removed inputs' mean contribution, W[:, removed] E[x_removed], shape (out,)."""
    removed = torch.ones(weight.shape[1], dtype=torch.bool)
    removed[kept] = False
    return weight.double()[:, removed] @ mean_input.double()[removed]


def output_error(weight: torch.Tensor, second_moment: torch.Tensor, new_weight: torch.Tensor,
                 kept: torch.Tensor) -> float:
    """E||W' x_K - W x||^2 relative to E||W x||^2, from the second moment alone."""
    w = weight.double()
    full = torch.zeros_like(w)
    full[:, kept] = new_weight.double()
    delta = full - w
    g = second_moment.double()
    return float(torch.einsum("oi,ij,oj->", delta, g, delta) / torch.einsum("oi,ij,oj->", w, g, w).clamp_min(1e-30))
