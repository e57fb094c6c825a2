"""Closed-form corrections: least squares beats plain pruning; the bias carries the removed mean."""

import pytest
import torch

from pipeline.compress.reform.projection_corrections import (REFORM_METHODS, admm_reform, compensation_bias, least_squares_refit,
                                          output_error, reform_columns)


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


# ---- ADMM reformation (Theorem 3.1) -----------------------------------------------
def pruned_problem(seed=1, dim=16, out=6):
    x = correlated_inputs(dim=dim, seed=seed)
    weight = torch.randn(out, dim, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    kept = torch.tensor([0, 1, 3, 4, 6, 8, 9, 12, 13, 15])
    return x, weight, kept, x.T @ x / len(x)


def test_admm_lowers_the_output_error_below_plain_pruning():
    x, weight, kept, second = pruned_problem()
    reformed = admm_reform(weight, second, kept)
    after = output_error(weight, second, reformed[:, kept], kept)
    before = output_error(weight, second, weight[:, kept], kept)
    assert after < 0.5 * before
    # The error from the moments is the error a user measures on the layer's outputs.
    measured = ((x[:, kept] @ reformed[:, kept].T - x @ weight.T) ** 2).sum() / ((x @ weight.T) ** 2).sum()
    assert abs(after - float(measured)) < 1e-9


def test_admm_leaves_the_pruned_columns_exactly_zero():
    _, weight, kept, second = pruned_problem()
    pruned = torch.ones(weight.shape[1], dtype=torch.bool)
    pruned[kept] = False
    for iterations in (1, 5, 30):
        reformed = admm_reform(weight, second, kept, iterations=iterations)
        assert torch.count_nonzero(reformed[:, pruned]) == 0
        assert torch.count_nonzero(reformed[:, kept]) == reformed[:, kept].numel()


def test_admm_converges_to_the_least_squares_refit_as_iterations_grow():
    _, weight, kept, second = pruned_problem()
    exact = least_squares_refit(weight, second, kept, damping=0.0)
    gaps = [float((admm_reform(weight, second, kept, iterations=k)[:, kept] - exact).norm() / exact.norm())
            for k in (1, 10, 100, 1000)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-6
    errors = [output_error(weight, second, admm_reform(weight, second, kept, iterations=k)[:, kept], kept)
              for k in (1, 10, 100)]
    assert errors[0] > errors[1] > errors[2] > output_error(weight, second, exact, kept) - 1e-12


def test_admm_projects_with_the_kept_mask_not_the_pruned_one():
    # The released code projects with the pruned mask, which keeps the omitted weights and zeroes
    # the kept ones; with the kept mask the answer is a genuine pruned layer that still beats W[:, K].
    _, weight, kept, second = pruned_problem(seed=3)
    reformed = admm_reform(weight, second, kept, rho=10.0, iterations=3)
    assert torch.count_nonzero(reformed[:, kept]) > 0
    assert output_error(weight, second, reformed[:, kept], kept) < output_error(weight, second, weight[:, kept], kept)


def test_reform_columns_dispatches_every_method_and_names_the_choices_on_a_typo():
    _, weight, kept, second = pruned_problem()
    mean = torch.zeros(weight.shape[1], dtype=torch.float64)
    for method in REFORM_METHODS:
        fix = reform_columns(method, weight, second, mean, kept)
        assert fix.weight.shape == (weight.shape[0], len(kept))
        assert (fix.bias is not None) == (method == "bias")
    with pytest.raises(ValueError, match="least-squares"):
        reform_columns("lstsq", weight, second, mean, kept)


@pytest.mark.parametrize("method", ["admm", "least-squares"])
def test_intercept_fits_a_bias_with_the_columns_and_beats_the_columns_alone(method):
    x, weight, kept, second = pruned_problem()  # inputs with a non-zero mean
    plain = reform_columns(method, weight, second, x.mean(0), kept)
    joint = reform_columns(method, weight, second, x.mean(0), kept, intercept=True)
    assert plain.bias is None and joint.bias.shape == (weight.shape[0],)
    assert (output_error(weight, second, joint.weight, kept, joint.bias, x.mean(0))
            < output_error(weight, second, plain.weight, kept))
    if method == "least-squares":  # the exact minimiser over columns and bias, as lstsq on [x_K, 1] finds it
        design = torch.cat([x[:, kept], torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        direct = torch.linalg.lstsq(design, x @ weight.T).solution.T
        torch.testing.assert_close(joint.weight, direct[:, :-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(joint.bias, direct[:, -1], atol=1e-4, rtol=1e-4)
