"""Reform-aware MLP width allocation: the removal cost is the error the least-squares correction leaves, weighted
by the loss gradient's covariance; the allocation spends a total on the layers where narrowing costs least."""

import pytest
import torch

from pipeline.compress.importance.mlp_width_costs import allocate_widths, output_gradient_covariance, removal_costs
from pipeline.models.adapters import adapter_for
from tests.factories import down_projection_problem, tiny_model


def test_the_cost_is_the_fisher_weighted_error_the_least_squares_correction_leaves():
    inputs, weight, fisher = down_projection_problem()
    order = torch.randperm(inputs.shape[1], generator=torch.Generator().manual_seed(1))
    costs = removal_costs(weight, inputs.T @ inputs / len(inputs), fisher, order, [3, 6, 9, 12])
    for width, cost in costs.items():
        kept = order[:width]
        target = inputs @ weight.T
        corrected = torch.linalg.lstsq(inputs[:, kept], target).solution  # the best kept weights for this output
        error = target - inputs[:, kept] @ corrected
        assert cost == pytest.approx(float(torch.einsum("ti,ij,tj->", error, fisher, error)) / len(inputs), rel=1e-4)
    assert costs[12] == 0.0 and costs[3] > costs[6] > costs[9] > 0


def test_the_correction_makes_narrowing_cheaper_than_dropping_the_channels_outright():
    inputs, weight, fisher = down_projection_problem()
    order = torch.arange(inputs.shape[1])
    costs = removal_costs(weight, inputs.T @ inputs / len(inputs), fisher, order, [6])
    dropped = inputs[:, 6:] @ weight[:, 6:].T  # the output lost with no correction
    uncorrected = float(torch.einsum("ti,ij,tj->", dropped, fisher, dropped)) / len(inputs)
    assert costs[6] < 0.9 * uncorrected


def test_the_allocation_narrows_the_layers_where_it_costs_least_down_to_the_total():
    cheap = {8: 1.0, 16: 0.5, 24: 0.0}
    dear = {8: 100.0, 16: 10.0, 24: 0.0}
    assert allocate_widths([dear, cheap, dear], 56) == [24, 8, 24]
    assert allocate_widths([dear, cheap, dear], 40) == [16, 8, 16]
    assert allocate_widths([dear, cheap, dear], 72) == [24, 24, 24]
    assert allocate_widths([dear, cheap], 1) == [8, 8]  # never below a layer's narrowest width


def test_the_gradient_covariance_is_that_of_the_loss_gradient_at_each_mlp_output():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    windows = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    covariances = output_gradient_covariance(model, adapter, windows, progress=False)
    assert len(covariances) == len(adapter.layers(model))
    # independently: add a zero perturbation to one MLP's output and differentiate the summed loss by it
    layer = adapter.layers(model)[1]
    expected = torch.zeros_like(covariances[1])
    for window in windows:
        ids = window.unsqueeze(0)
        shift = torch.zeros(1, ids.shape[1], model.config.hidden_size, requires_grad=True)
        hook = adapter.mlp_linears(layer)[2].register_forward_hook(lambda _m, _i, out: out + shift)
        with torch.enable_grad():
            logits = model(ids).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            (grad,) = torch.autograd.grad(loss, shift)
        hook.remove()
        expected += grad[0].double().T @ grad[0].double()
    assert torch.allclose(covariances[1], expected / windows.numel(), rtol=1e-4, atol=1e-10)
    assert covariances[1].trace() > 0
    assert all(p.grad is None for p in model.parameters())  # the weights were not differentiated
