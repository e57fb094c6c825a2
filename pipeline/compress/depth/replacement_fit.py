"""Fitting a lightweight layer in place of a span of blocks, on cached hidden states (LLM-Streamline).

The replacement is a decoder layer of the sculpted model whose attention is skipped, so it maps
each token on its own: y = x + f(norm(x)), with x the stream entering the span and y the
stream leaving it. Two forms:

- linear: f = one d x d matrix P. The best P in the least-squares sense has a closed form,
  P = E[(y - x) n^T] (E[n n^T] + lambda I)^-1 with n = norm(x) (a ridge of relative size
  `damping` keeps it well posed); no SGD.
- ffn: f = the family's gated MLP, trained with AdamW on the MSE between layer(x) and y, with
  cosine learning-rate decay, keeping the epoch with the lowest held-out error (the paper's
  FFN recipe: AdamW, lr 1e-3, weight decay 1e-4, betas (0.9, 0.95), 3 % warm-up).

Errors are reported relative to skipping the span (f = 0): E||layer(x) - y||^2 / E||x - y||^2,
so 1.0 means the replacement does no better than deleting the span.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.compress.calibration.layer_stream import capture_inputs

LINEAR_DAMPING = 1e-4  # ridge relative to the mean diagonal of E[n n^T]
WARMUP_SHARE = 0.03
MIN_LR_SHARE = 0.025  # the cosine schedule ends at this fraction of the peak learning rate (2.5e-5 / 1e-3)


def tokens_of(batches: list[torch.Tensor]) -> torch.Tensor:
    """Every token's vector as one [N, d] float32 tensor."""
    return torch.cat([b.reshape(-1, b.shape[-1]) for b in batches]).float()


# ---- pure math ---------------------------------------------------------------
def least_squares_map(inputs: torch.Tensor, targets: torch.Tensor, damping: float = LINEAR_DAMPING) -> torch.Tensor:
    """argmin_P sum_t ||P x_t - y_t||^2 + lambda ||P||^2 for rows x_t of `inputs`, y_t of `targets` (float64)."""
    x, y = inputs.double(), targets.double()
    gram = x.T @ x
    ridge = damping * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                          device=gram.device)
    return torch.linalg.solve(gram + ridge, x.T @ y).T  # (G + lambda I) P^T = X^T Y


@torch.no_grad()
def relative_error(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> float:
    """E||layer(x) - y||^2 / E||x - y||^2 over the rows of inputs/targets (1.0 = no better than skipping)."""
    error, baseline = 0.0, 0.0
    for start in range(0, inputs.shape[0], chunk):
        x, y = inputs[start:start + chunk], targets[start:start + chunk]
        error += float((layer(x) - y).double().pow(2).sum())
        baseline += float((x - y).double().pow(2).sum())
    return error / max(baseline, 1e-30)


# ---- fitting a sculpted layer -------------------------------------------------
@torch.no_grad()
def fit_linear(norm: nn.Module, proj: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor,
               damping: float = LINEAR_DAMPING) -> None:
    """Set `proj` so that x + proj(norm(x)) best matches the targets (closed form)."""
    proj.weight.copy_(least_squares_map(norm(inputs), targets - inputs, damping).to(proj.weight.dtype))


@torch.no_grad()
def channel_scores(norm: nn.Module, mlp: nn.Module, down: nn.Linear, inputs: torch.Tensor,
                   chunk: int = 4096) -> torch.Tensor:
    """E[a_j^2] ||W_down[:, j]||^2 of every MLP channel j on these inputs: the output energy each
    channel adds (a_j is the gated activation, the input of the down projection)."""
    energy = torch.zeros(down.in_features, dtype=torch.float64, device=down.weight.device)
    sink = lambda _name, a: energy.add_(a.reshape(-1, a.shape[-1]).double().pow(2).sum(dim=0))  # noqa: E731
    with capture_inputs({"down": down}, sink):
        for start in range(0, inputs.shape[0], chunk):
            mlp(norm(inputs[start:start + chunk]))
    return energy * down.weight.double().pow(2).sum(dim=0)


def learning_rate(step: int, total: int, peak: float) -> float:
    warmup = max(1, int(WARMUP_SHARE * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = MIN_LR_SHARE * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_layer(layer: nn.Module, train: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor],
                epochs: int, lr: float, batch_tokens: int, seed: int = 0, progress: bool = True) -> list[dict]:
    """AdamW on the MSE between layer(x) and y over shuffled tokens; restores the epoch with the lowest
    held-out relative error (epoch 0 = the initial weights). Returns the per-epoch log."""
    inputs, targets = train
    params = [p for p in layer.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(inputs.shape[0] / batch_tokens)
    total = epochs * steps_per_epoch
    log = [{"epoch": 0, "train": relative_error(layer, *train), "held_out": relative_error(layer, *held_out)}]
    best = (log[0]["held_out"], copy.deepcopy(layer.state_dict()))
    step = 0
    for epoch in tqdm(range(1, epochs + 1), desc="train replacement", unit="epoch", disable=not progress):
        order = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
        with torch.enable_grad():
            for batch in order.split(batch_tokens):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total, lr)
                loss = nn.functional.mse_loss(layer(inputs[batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
        log.append({"epoch": epoch, "train": relative_error(layer, *train), "held_out": relative_error(layer, *held_out)})
        if log[-1]["held_out"] < best[0]:
            best = (log[-1]["held_out"], copy.deepcopy(layer.state_dict()))
    layer.load_state_dict(best[1])
    return log
