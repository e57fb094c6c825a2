"""A second moment from few tokens, kept as its token rows. Pure math, float64.

With N calibration tokens and n inputs, G = X^T X / N has rank at most N. When N is well below n (a
short calibration set on a wide layer: 1,024 tokens into a 7B MLP's 18,944-wide down projection) the
N x n rows are smaller than the n x n matrix, and every ridge solve the pipeline makes with G goes
through the N x N system instead (the Woodbury identity), exact in exact arithmetic:

    (F^T F + lambda I)^-1 = (I - F^T (lambda I + F F^T)^-1 F) / lambda,     F = X / sqrt(N).

That turns the n^3 factorisations (6.8 TFLOP per 7B layer) into N^2 n products (~0.04 TFLOP at N = 1,024).
Past N = n / 2 the dense Gram's solves are the cheaper ones, and layer_stream.GramAccumulator folds the rows
into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankMoment:
    """G = F^T F for a factor F (r x n, float64): the second moment of r tokens without the n x n matrix."""

    factor: torch.Tensor

    def dense(self) -> torch.Tensor:
        """G itself (n x n): for the solvers that need the matrix (ADMM)."""
        return self.factor.T @ self.factor

    def diagonal(self) -> torch.Tensor:
        return self.factor.pow(2).sum(dim=0)

    def cpu(self) -> LowRankMoment:
        return LowRankMoment(self.factor.cpu())

    def scaled(self, factor: float) -> LowRankMoment:
        """`factor` * G."""
        return LowRankMoment(self.factor * factor ** 0.5)

    def with_constant_input(self) -> LowRankMoment:
        """The second moment of the inputs [x; 1]: a column 1 / sqrt(N) beside X / sqrt(N), so its cross moment with
        x is the same tokens' E[x] and its own E[1] = 1 (the dense form's added row and column)."""
        tokens = self.factor.shape[0]
        return LowRankMoment(torch.cat([self.factor, self.factor.new_full((tokens, 1), tokens ** -0.5)], dim=1))

    def quadratic(self, weight: torch.Tensor) -> torch.Tensor:
        """trace(A G A^T) = ||A F^T||^2 for A (out x n): E||A x||^2."""
        return (weight.double() @ self.factor.T).pow(2).sum()

    def ridge_inverse_diagonal(self, ridge: float) -> torch.Tensor:
        """diag((G + ridge I)^-1) = (1 - colsum((L^-1 F)^2)) / ridge, with L L^T = ridge I + F F^T."""
        factor = torch.linalg.cholesky(self._inner(self.factor, ridge))
        solved = torch.linalg.solve_triangular(factor, self.factor, upper=False)
        return (1 - solved.pow(2).sum(dim=0)) / ridge

    def ridge_fit(self, weight: torch.Tensor, kept: torch.Tensor, ridge: float) -> torch.Tensor:
        """W G[:, K] (G_KK + ridge I)^-1 (out x |K|) = (W F^T) (ridge I + F_K F_K^T)^-1 F_K: the least-squares refit
        of W on the kept inputs K, through the r x r system."""
        kept_factor = self.factor[:, kept]
        cross = weight.double() @ self.factor.T  # (out, r)
        system = torch.linalg.cholesky(self._inner(kept_factor, ridge))
        return torch.cholesky_solve(cross.T, system).T @ kept_factor

    @staticmethod
    def _inner(factor: torch.Tensor, ridge: float) -> torch.Tensor:
        inner = factor @ factor.T
        inner.diagonal().add_(ridge)
        return inner
