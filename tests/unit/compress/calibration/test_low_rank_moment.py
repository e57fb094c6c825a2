"""Fewer calibration tokens than inputs: the statistics stay token rows, and every solve gives the dense answer."""

import pytest
import torch

from pipeline.compress.calibration.layer_stream import GramAccumulator
from pipeline.compress.calibration.low_rank_moment import LowRankMoment
from pipeline.compress.importance.obs_importance import inverse_hessian_diag, inverse_hessian_diag_in_place
from pipeline.compress.reform.projection_corrections import (least_squares_refit, output_energy, output_error,
                                                             reform_columns)

INPUTS, TOKENS, OUTPUTS = 96, 40, 12  # rows kept up to INPUTS / 2 = 48 tokens


def _accumulator(tokens: int = TOKENS, inputs: int = INPUTS, seed: int = 0) -> GramAccumulator:
    generator = torch.Generator().manual_seed(seed)
    acc = GramAccumulator()
    for _ in range(tokens // 10):  # windows of 10 tokens, channels of very different scales
        acc.add(torch.randn(10, inputs, generator=generator) * torch.linspace(0.05, 4.0, inputs))
    return acc


def _problem():
    moment = _accumulator().second_moment()
    assert isinstance(moment, LowRankMoment)
    exact = moment.dense()  # the same tokens' G in float64, what the dense solvers are checked on
    weight = torch.randn(OUTPUTS, INPUTS, generator=torch.Generator().manual_seed(1))
    kept = torch.randperm(INPUTS, generator=torch.Generator().manual_seed(2))[:70].sort().values
    return moment, exact, weight, kept


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_an_accumulator_keeps_token_rows_until_it_has_seen_half_as_many_tokens_as_inputs():
    short = _accumulator(tokens=TOKENS)
    assert isinstance(short.second_moment(), LowRankMoment) and short.second_moment().factor.shape == (TOKENS, INPUTS)
    torch.testing.assert_close(short.second_moment().dense(), short.mean(), rtol=1e-5, atol=1e-5)
    long = _accumulator(tokens=INPUTS // 2 + 10)
    assert isinstance(long.second_moment(), torch.Tensor)  # the Gram is the smaller form now


def test_taking_the_rows_keeps_the_other_statistics():
    acc, twin = _accumulator(), _accumulator()
    moment = acc.take_second_moment()
    assert isinstance(moment, LowRankMoment)
    torch.testing.assert_close(acc.square_mean(), twin.square_mean())
    torch.testing.assert_close(acc.input_mean(), twin.input_mean())
    with pytest.raises(ValueError, match="already taken"):
        acc.take_mean()


def test_importance_from_rows_equals_the_dense_inverse():
    moment, exact, _, _ = _problem()
    torch.testing.assert_close(inverse_hessian_diag(moment), inverse_hessian_diag(exact), rtol=1e-9, atol=0)
    torch.testing.assert_close(inverse_hessian_diag_in_place(_accumulator()), inverse_hessian_diag(moment))


def test_least_squares_from_rows_equals_the_dense_solve():
    moment, exact, weight, kept = _problem()
    refit = least_squares_refit(weight, moment, kept)
    assert _relative(refit, least_squares_refit(weight, exact, kept)) < 1e-7
    # fewer tokens than kept inputs: the refit reproduces the calibration outputs almost exactly
    assert output_error(weight, moment, refit, kept) < 1e-6 < output_error(weight, moment, weight[:, kept], kept)


def test_errors_and_every_reform_method_from_rows_equal_the_dense_ones():
    moment, exact, weight, kept = _problem()
    mean = moment.factor.sum(dim=0) / TOKENS ** 0.5  # the same tokens' E[x]
    assert float(output_energy(weight, moment)) == pytest.approx(float(output_energy(weight, exact)), rel=1e-12)
    plain = weight[:, kept]
    dense_error = output_error(weight, exact, plain, kept)
    assert output_error(weight, moment, plain, kept) == pytest.approx(dense_error, rel=1e-10)
    for method in ("admm", "least-squares", "bias"):
        for intercept in (False, True):
            low = reform_columns(method, weight, moment, mean, kept, intercept=intercept)
            dense = reform_columns(method, weight, exact, mean, kept, intercept=intercept)
            assert _relative(low.weight, dense.weight) < 1e-6, (method, intercept)
            assert (low.bias is None) == (dense.bias is None)
            if dense.bias is not None:
                assert _relative(low.bias, dense.bias) < 1e-6, (method, intercept)
