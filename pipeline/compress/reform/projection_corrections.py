"""Corrections of a layer whose input units were pruned (attention output, MLP down).

With W (out x in) the original weights, X the layer's inputs and K the kept input units,
the pruned layer computes W[:, K] X_K. These corrections change the kept weights (or add a
bias) so the output stays close to W X, using only the second moment G = E[x x^T]
and the mean E[x] of the inputs from calibration data. Pure math, float64.

- `least_squares_refit`: the exact minimiser of E||W' x_K - W x||^2 (one solve).
- `admm_reform`: the same objective under the constraint "pruned columns are zero", solved
  by ADMM ("Search for Efficient LLMs", Shen et al. 2024, Theorem 3.1); a finite number of
  iterations stops short of the least-squares point, on the way from W.
- `compensation_bias`: FLAP's bias, the removed inputs' mean contribution.

G may come as a `LowRankMoment` (few calibration tokens, wide inputs): least squares and the errors then work
through the tokens' small system (calibration/low_rank_moment.py); ADMM forms G.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from pipeline.compress.calibration.low_rank_moment import LowRankMoment

DAMPING = 1e-6  # relative ridge on G_KK: keeps the solve well posed when kept inputs are collinear
RIDGE_RETRIES = 4  # 10x the ridge each time G_KK + ridge is still not positive definite (up to 1e-2)
ADMM_RHO = 1.0  # the paper's penalty; relative to the unit-diagonal (Jacobi-scaled) G, see `admm_reform`
ADMM_ITERATIONS = 30  # the paper's count ("converges within 20-30, 50 is no better")
DEAD_INPUT = 1e-12  # inputs whose mean square is below this fraction of the average count as always zero


def ridged(second_moment: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """G + lambda I with lambda = damping * mean(diag G) (float64): the ridge every least-squares solve here uses."""
    return _ridge_in_place(second_moment.double().clone(), damping)


def _ridge_in_place(g: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """`ridged` overwriting `g` (float64): lambda added to the diagonal, the same numbers as G + lambda I without
    an identity matrix and a sum beside G (at 7B, an MLP's G is 18944^2 float64, 2.9 GB each)."""
    g.diagonal().add_(damping * g.diagonal().mean().clamp_min(1e-12))
    return g


def least_squares_refit(weight: torch.Tensor, second_moment: torch.Tensor | LowRankMoment, kept: torch.Tensor,
                        damping: float = DAMPING) -> torch.Tensor:
    """argmin over W' of E||W' x_K - W x||^2:  W' = W G[:, K] (G_KK + lambda I)^-1, shape (out, |K|).

    A `LowRankMoment` (few calibration tokens, wide inputs) solves the same ridge problem through its tokens'
    system, which the ridge keeps positive definite: no retries."""
    if isinstance(second_moment, LowRankMoment):
        kept = torch.as_tensor(kept, dtype=torch.long)
        ridge = damping * float(second_moment.diagonal()[kept].mean().clamp_min(1e-12))
        return second_moment.ridge_fit(weight, kept, ridge)
    g = second_moment.double()
    return kept_least_squares(weight.double() @ g[:, kept], g, kept, damping)


def kept_least_squares(cross_kept: torch.Tensor, second_moment: torch.Tensor, kept: torch.Tensor,
                       damping: float = DAMPING) -> torch.Tensor:
    """The same refit from the cross moment (W G)[:, K] (out x |K|), for a caller that keeps W G."""
    # (G_KK + lambda I) W'^T = (W G[:, K])^T; the left side is symmetric positive definite: one Cholesky solve.
    kept = torch.as_tensor(kept, dtype=torch.long)
    return torch.cholesky_solve(cross_kept.double().T, _kept_factor(second_moment, kept, damping)).T


def _kept_factor(second_moment: torch.Tensor, kept: torch.Tensor, damping: float) -> torch.Tensor:
    """The Cholesky factor of G_KK + lambda I; with 10x the ridge, up to RIDGE_RETRIES times, where rounding
    leaves it indefinite: G is rank-deficient when the calibration has fewer tokens than inputs (1,024 tokens
    for a 7B MLP's 18,944), and its float32 window products are then off by more than the 1e-6 ridge."""
    for _ in range(RIDGE_RETRIES + 1):
        factor, info = torch.linalg.cholesky_ex(_ridge_in_place(second_moment.double()[kept[:, None], kept], damping))
        if int(info) == 0:
            return factor
        warnings.warn(f"G_KK + {damping:g} * mean(diag) * I is not positive definite (rank-deficient second moment: "
                      f"fewer calibration tokens than inputs?); retrying with {damping * 10:g}", stacklevel=3)
        damping *= 10
    raise ValueError(f"the kept inputs' second moment is not positive definite even with a ridge of {damping / 10:g} "
                     "x its mean diagonal: use more calibration tokens (reform.samples, reform.seqlen)")


def admm_reform(weight: torch.Tensor, second_moment: torch.Tensor | LowRankMoment, kept: torch.Tensor,
                rho: float = ADMM_RHO, iterations: int = ADMM_ITERATIONS) -> torch.Tensor:
    """min ||W' X - W X||^2 s.t. the pruned columns of W' are zero, by ADMM; returns W' (out x in).

    Scale convention: the problem is solved for the Jacobi-scaled inputs x_j / sqrt(G_jj)
    (unit-diagonal G, as the released code does), so `rho` means the same whether G is a
    sum or a mean over tokens and whatever the channels' magnitudes: rho = 1 weighs the
    proximal term like one input channel's whole energy. Scaling columns keeps the
    constraint and the minimiser; only the path of the iterations depends on it.

    Per Theorem 3.1, in the transposed (in x out) space, from W^0 = Z^0 = W, U^0 = 0:
        W^{k+1} = (G + rho I)^-1 (G W^T + rho (Z^k - U^k))
        Z^{k+1} = (W^{k+1} + U^k) * keep        # projection onto "pruned columns are zero"
        U^{k+1} = U^k + W^{k+1} - Z^{k+1}
    The paper prints the projection with the *pruned* mask, and the released code does the
    same, which keeps the omitted weights; the projection onto the constraint set uses the
    kept mask. The result is Z, so the pruned columns are exactly zero.
    """
    if iterations < 1:
        raise ValueError(f"ADMM needs at least one iteration, got {iterations}")
    g = second_moment.dense() if isinstance(second_moment, LowRankMoment) else second_moment.double()
    diagonal = g.diagonal()
    scale = diagonal.clamp_min(DEAD_INPUT * diagonal.mean().clamp_min(1e-30)).sqrt()
    g = (g / scale[:, None]).div_(scale[None, :])  # one copy of G (the caller's is left as it is)
    w_t = (weight.double() * scale).T  # (in, out): W X = (W D)(D^-1 X)
    keep = torch.zeros(g.shape[0], 1, dtype=g.dtype)
    keep[kept] = 1.0
    # One factorisation for all iterations: W^{k+1} = A (G W^T) + rho A (Z - U), A = (G + rho I)^-1.
    # Built in place (G + rho I is G with rho added to its diagonal), so that at most three in x in matrices
    # exist at once (the caller's G, the scaled one, its factor): at 7B each is 18944^2 float64, 2.9 GB.
    target = g @ w_t
    g.diagonal().add_(rho)
    system = torch.linalg.cholesky(g)
    del g
    inverse = torch.cholesky_inverse(system)
    del system
    fixed = inverse @ target
    step = inverse.mul_(rho)
    z, u = w_t, torch.zeros_like(w_t)
    for _ in range(iterations):
        w_hat = fixed + step @ (z - u)
        z = (w_hat + u) * keep
        u = u + w_hat - z
    return z.T / scale


def compensation_bias(weight: torch.Tensor, mean_input: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """FLAP-style bias: the removed inputs' mean contribution, W[:, removed] E[x_removed], shape (out,)."""
    removed = torch.ones(weight.shape[1], dtype=torch.bool)
    removed[kept] = False
    return weight.double()[:, removed] @ mean_input.double()[removed]


def output_energy(weight: torch.Tensor, second_moment: torch.Tensor | LowRankMoment) -> torch.Tensor:
    """E||W x||^2 from the moments: what `output_error` divides by (compute it once for several errors of W)."""
    if isinstance(second_moment, LowRankMoment):
        return second_moment.quadratic(weight)
    w = weight.double()
    return torch.einsum("oi,ij,oj->", w, second_moment.double(), w)


def output_error(weight: torch.Tensor, second_moment: torch.Tensor | LowRankMoment, new_weight: torch.Tensor,
                 kept: torch.Tensor, bias: torch.Tensor | None = None,
                 mean_input: torch.Tensor | None = None, energy: torch.Tensor | None = None) -> float:
    """E||W' x_K + b - W x||^2 relative to E||W x||^2, from the moments alone (b needs E[x]).

    `energy`: `output_energy(weight, second_moment)` when already computed (at 7B each costs as much as a solve)."""
    w = weight.double()
    full = torch.zeros_like(w)
    full[:, kept] = new_weight.double()
    delta = full - w
    error = output_energy(delta, second_moment)
    if bias is not None:
        if mean_input is None:
            raise ValueError("the error of a layer with a bias needs the mean input")
        b = bias.double()
        error = error + 2 * b @ (delta @ mean_input.double()) + b @ b
    if energy is None:
        energy = output_energy(w, second_moment)
    return float(error / energy.clamp_min(1e-30))


# ---- one interface for the reform stage --------------------------------------
REFORM_METHODS = ("admm", "least-squares", "bias")


@dataclass(frozen=True)
class ColumnFix:
    """A corrected projection: its kept columns (out x |K|) and, for `bias`, the added bias (out,)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None


def reform_columns(method: str, weight: torch.Tensor, second_moment: torch.Tensor | LowRankMoment,
                   mean_input: torch.Tensor, kept: torch.Tensor, rho: float = ADMM_RHO,
                   iterations: int = ADMM_ITERATIONS, intercept: bool = False) -> ColumnFix:
    """The kept columns of `weight` corrected by `method` (one of REFORM_METHODS), float64.

    `intercept` (admm, least-squares): fit an output bias together with the kept columns, as a column for a
    constant input 1 that is never pruned. For a projection that already carries a compensation bias (FLAP's)
    this refits that bias with the weights instead of adding a second correction on top of it."""
    if intercept and method in ("admm", "least-squares"):
        return _with_intercept(method, weight, second_moment, mean_input, kept, rho, iterations)
    if method == "admm":
        return ColumnFix(admm_reform(weight, second_moment, kept, rho, iterations)[:, kept])
    if method == "least-squares":
        return ColumnFix(least_squares_refit(weight, second_moment, kept))
    if method == "bias":
        return ColumnFix(weight.double()[:, kept], compensation_bias(weight, mean_input, kept))
    raise ValueError(f"unknown reform method {method!r}; expected one of {REFORM_METHODS}")


def _with_intercept(method: str, weight: torch.Tensor, second_moment: torch.Tensor | LowRankMoment,
                    mean_input: torch.Tensor, kept: torch.Tensor, rho: float, iterations: int) -> ColumnFix:
    """`reform_columns` on the inputs [x; 1]: G grows a row and column of E[x] and E[1] = 1, W a zero column
    (the target has no bias of its own), and the constant's column, always kept, comes back as the bias. Token
    rows (`LowRankMoment`) get the constant as one more column."""
    inputs = weight.shape[1]
    mean = mean_input.double().reshape(-1)
    if isinstance(second_moment, LowRankMoment):
        augmented = second_moment.with_constant_input()
    else:
        augmented = torch.zeros(inputs + 1, inputs + 1, dtype=torch.float64)
        augmented[:inputs, :inputs] = second_moment.double()
        augmented[:inputs, inputs] = augmented[inputs, :inputs] = mean
        augmented[inputs, inputs] = 1.0
    padded = torch.cat([weight.double(), torch.zeros(weight.shape[0], 1, dtype=torch.float64)], dim=1)
    kept_augmented = torch.cat([torch.as_tensor(kept, dtype=torch.long), torch.tensor([inputs])])
    fix = reform_columns(method, padded, augmented, torch.cat([mean, mean.new_ones(1)]), kept_augmented, rho,
                         iterations)
    return ColumnFix(fix.weight[:, :-1], fix.weight[:, -1])
