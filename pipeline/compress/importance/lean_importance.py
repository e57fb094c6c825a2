"""The OBS importance of obs_importance.py in bounded memory, for models streamed layer by layer.

Same scores, bit for bit (tests/unit/models/test_streaming_pipeline.py checks it), from the same scoring
functions; what differs is only how the statistics are held. At 7B an MLP down projection's input
second moment is 18944^2 float64 (2.9 GB): `layer_importance` keeps the accumulator, its mean, the
Hessian, the identity it adds and the inverse alive together (about 17 GB); here each second moment
is taken out of its accumulator, turned into the damped Hessian in place, factorised and dropped, so
at most two such matrices exist at once (the Hessian and its Cholesky factor, then the factor and the
inverse), and only the inverse's diagonal is kept.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pipeline.compress.calibration.layer_stream import GramAccumulator, LayerStream, gram_of_inputs
from pipeline.models.adapters import ATTENTION_OUTPUT, MLP_OUTPUT, FamilyAdapter

from .obs_importance import DAMPING, LayerImportance, attention_scores, mlp_scores


def inverse_hessian_diag_in_place(statistics: GramAccumulator, damping: float = DAMPING) -> torch.Tensor:
    """obs_importance.inverse_hessian_diag of `statistics.mean()`, made in the accumulator's own storage, which it
    gives up (`take_mean`). It takes the accumulator, not the matrix, so that no caller's reference keeps the
    matrix alive beside the Cholesky factor."""
    hessian = statistics.take_mean().mul_(2)
    # hessian + lambda * I adds lambda to the diagonal and 0 elsewhere: the same numbers, no identity matrix
    hessian.diagonal().add_(damping * hessian.diagonal().mean().clamp_min(1e-12))
    factor = torch.linalg.cholesky(hessian)
    del hessian
    return torch.cholesky_inverse(factor).diagonal().clone()


@torch.no_grad()
def lean_layer_importance(model, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int = 1,
                          progress: bool = True) -> list[LayerImportance]:
    """obs_importance.layer_importance (without its `on_layer` callback), in bounded memory."""
    dims = adapter.dims(model.config)
    stream = LayerStream(model, adapter, windows, batch_size)
    results = []
    for layer in tqdm(adapter.layers(model), desc="importance", unit="layer", disable=not progress):
        inputs = {"attention_input": adapter.attention_input(layer), ATTENTION_OUTPUT: adapter.attention_linears(layer).o,
                  "mlp_input": adapter.mlp_input(layer), MLP_OUTPUT: adapter.mlp_linears(layer).down}
        with gram_of_inputs(inputs) as grams:
            outputs = stream.run(layer)  # a streamed layer stays in memory until advance
        inv = {name: inverse_hessian_diag_in_place(grams.pop(name)) for name in list(grams)}
        q, k, v, o = adapter.attention_linears(layer)
        gate, up, down = adapter.mlp_linears(layer)
        q_heads, kv_groups = attention_scores(q.weight, k.weight, v.weight, o.weight, inv["attention_input"],
                                              inv[ATTENTION_OUTPUT], dims.head_dim, dims.group_size)
        channels = mlp_scores(gate.weight, up.weight, down.weight, inv["mlp_input"], inv[MLP_OUTPUT])
        results.append(LayerImportance(q_heads.cpu(), kv_groups.cpu(), channels.cpu()))
        stream.advance(outputs)
    return results
