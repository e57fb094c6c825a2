"""Weight importance from calibration activations ("Search for Efficient LLMs", Shen et al. 2024, §3.2).

For a linear layer W (out x in) with input second moment E[x x^T], the OBS importance of
weight (i, j) is  Phi_ij = W_ij^2 / [(2 E[x x^T])^-1]_jj.  Output units (rows of q/k/v/gate/up)
score the sum over their row, input units (columns of o/down) the sum over their column;
a head or an MLP channel scores the sum over every linear it spans (one shared mask per module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from pipeline.compress.calibration.layer_stream import GramAccumulator, LayerStream, gram_of_inputs
from pipeline.compress.calibration.low_rank_moment import LowRankMoment
from pipeline.models.adapters import ATTENTION_OUTPUT, MLP_OUTPUT, FamilyAdapter

DAMPING = 0.01  # fraction of the mean Hessian diagonal added before inverting (as SparseGPT)


# ---- pure math ---------------------------------------------------------------
def inverse_hessian_diag(second_moment: torch.Tensor | LowRankMoment, damping: float = DAMPING) -> torch.Tensor:
    """diag((H + lambda I)^-1) for H = 2 E[x x^T], lambda = damping * mean(diag H); float64. A `LowRankMoment`
    (few calibration tokens, wide inputs) goes through its tokens' small system: the same numbers, no n^3 work."""
    if isinstance(second_moment, LowRankMoment):
        hessian = second_moment.scaled(2)
        return hessian.ridge_inverse_diagonal(damping * float(hessian.diagonal().mean().clamp_min(1e-12)))
    hessian = 2 * second_moment.double()
    hessian = hessian + damping * hessian.diagonal().mean().clamp_min(1e-12) * torch.eye(
        hessian.shape[0], dtype=hessian.dtype, device=hessian.device
    )
    return torch.cholesky_inverse(torch.linalg.cholesky(hessian)).diagonal()


def inverse_hessian_diag_in_place(statistics: GramAccumulator, damping: float = DAMPING) -> torch.Tensor:
    """`inverse_hessian_diag` of `statistics.mean()`, the same numbers, made in the accumulator's own storage, which
    it gives up (`take_second_moment`): at 7B an MLP down projection's second moment is 18944^2 float64 (2.9 GB),
    and this holds two such matrices at most (the Hessian and its factor, then the factor and the inverse) where
    the copying version holds five; from a few tokens, none (their rows' small system).
    It takes the accumulator, not the matrix, so no caller's reference keeps the matrix alive beside the factor."""
    moment = statistics.take_second_moment()
    if isinstance(moment, LowRankMoment):
        return inverse_hessian_diag(moment, damping)
    hessian = moment.mul_(2)
    hessian.diagonal().add_(damping * hessian.diagonal().mean().clamp_min(1e-12))  # + lambda I, no identity made
    factor = torch.linalg.cholesky(hessian)
    del hessian
    return torch.cholesky_inverse(factor).diagonal().clone()


def element_scores(weight: torch.Tensor, inv_diag: torch.Tensor) -> torch.Tensor:
    """Phi = W^2 / [H^-1]_jj for every element of W (out x in)."""
    return weight.double().pow(2) / inv_diag.to(weight.device).unsqueeze(0)


def row_scores(weight: torch.Tensor, inv_diag: torch.Tensor) -> torch.Tensor:
    return element_scores(weight, inv_diag).sum(dim=1)


def column_scores(weight: torch.Tensor, inv_diag: torch.Tensor) -> torch.Tensor:
    return element_scores(weight, inv_diag).sum(dim=0)


def per_head(unit_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum consecutive blocks of head_dim unit scores: one score per head."""
    return unit_scores.reshape(-1, head_dim).sum(dim=1)


@dataclass(frozen=True)
class LayerImportance:
    """Scores of one layer's prunable units (float64, higher = more important)."""

    q_heads: torch.Tensor  # [num_heads]: q rows and o columns of the head
    kv_groups: torch.Tensor  # [num_kv_heads]: k and v rows of the group plus its query heads
    mlp_channels: torch.Tensor  # [intermediate]: gate and up rows, down column


def attention_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    attn_inv: torch.Tensor, o_inv: torch.Tensor, head_dim: int, group_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    q_heads = per_head(row_scores(q, attn_inv), head_dim) + per_head(column_scores(o, o_inv), head_dim)
    kv_own = per_head(row_scores(k, attn_inv), head_dim) + per_head(row_scores(v, attn_inv), head_dim)
    kv_groups = kv_own + q_heads.reshape(-1, group_size).sum(dim=1)
    return q_heads, kv_groups


def mlp_scores(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
               mlp_inv: torch.Tensor, down_inv: torch.Tensor) -> torch.Tensor:
    return row_scores(gate, mlp_inv) + row_scores(up, mlp_inv) + column_scores(down, down_inv)


# ---- running the model --------------------------------------------------------
LayerCallback = Callable[[int, dict[str, GramAccumulator], "LayerImportance"], None]


@torch.no_grad()
def layer_importance(model, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int = 1,
                     progress: bool = True, on_layer: LayerCallback | None = None) -> list[LayerImportance]:
    """Importance of every head, KV group and MLP channel of a dense model, from calibration windows.

    `on_layer(index, grams, scores)` sees each layer's input statistics ("attention_input", ATTENTION_OUTPUT, "mlp_input", MLP_OUTPUT)
    and its scores, for a caller that needs them too (the search's reform-aware fitness and width allocation)
    without another pass. Without `on_layer` the statistics are inverted in place (bounded memory at 7B, same
    scores bit for bit)."""
    dims = adapter.dims(model.config)
    stream = LayerStream(model, adapter, windows, batch_size)
    results = []
    for index, layer in enumerate(tqdm(adapter.layers(model), desc="importance", unit="layer", disable=not progress)):
        q, k, v, o = adapter.attention_linears(layer)
        gate, up, down = adapter.mlp_linears(layer)
        inputs = {"attention_input": adapter.attention_input(layer), ATTENTION_OUTPUT: o,
                  "mlp_input": adapter.mlp_input(layer), MLP_OUTPUT: down}
        with gram_of_inputs(inputs) as grams:
            outputs = stream.run(layer)
        if on_layer is None:  # nothing else reads the statistics: invert them in their own storage
            inv = {name: inverse_hessian_diag_in_place(grams.pop(name)) for name in list(grams)}
        else:
            inv = {name: inverse_hessian_diag(acc.second_moment()) for name, acc in grams.items()}
        q_heads, kv_groups = attention_scores(
            q.weight, k.weight, v.weight, o.weight, inv["attention_input"], inv[ATTENTION_OUTPUT], dims.head_dim, dims.group_size
        )
        channels = mlp_scores(gate.weight, up.weight, down.weight, inv["mlp_input"], inv[MLP_OUTPUT])
        results.append(LayerImportance(q_heads.cpu(), kv_groups.cpu(), channels.cpu()))
        if on_layer is not None:
            on_layer(index, grams, results[-1])
        stream.advance(outputs)
    return results
