"""Closed-form corrections: least squares beats plain pruning; the bias carries the removed mean."""

import torch

from pipeline.compress.reformation import compensation_bias, least_squares_refit, output_error


def correlated_inputs(n=4000, dim=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mix + 0.5


def test_least_squares_refit_lowers_the_output_error_and_matches_lstsq():
    x = correlated_inputs()
    weight = torch.randn(5, 12, dtype=torch.float64)
    kept = torch.tensor([0, 2, 3, 7, 9, 11])
    second = x.T @ x / len(x)
    refit = least_squares_refit(weight, second, kept)
    assert output_error(weight, second, refit, kept) < output_error(weight, second, weight[:, kept], kept)
    direct = torch.linalg.lstsq(x[:, kept], x @ weight.T).solution.T
    torch.testing.assert_close(refit, direct, atol=1e-4, rtol=1e-4)


def test_compensation_bias_restores_the_mean_output():
    x = correlated_inputs()
    weight = torch.randn(4, 12, dtype=torch.float64)
    kept = torch.tensor([1, 4, 5])
    bias = compensation_bias(weight, x.mean(0), kept)
    pruned = x[:, kept] @ weight[:, kept].T + bias
    torch.testing.assert_close(pruned.mean(0), (x @ weight.T).mean(0))
