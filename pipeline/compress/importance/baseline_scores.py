"""Scoring rules of the width baselines (magnitude, Wanda-sp, FLAP). Pure math, float64.

Every rule scores the prunable units of one layer: each query head (its q rows and output
columns), each KV group (its k/v rows and all its query heads) and each MLP channel (its
gate/up rows and down projection column); higher = more important. The papers assume multi-head
attention, where a head owns its k/v rows; under GQA the unit that owns k/v is the group,
and the rules below extend to it by summing (or, for FLAP's standardised scores,
averaging) over the group's query heads.
"""

from __future__ import annotations

from typing import Literal

import torch

from pipeline.compress.calibration.projection_statistics import InputStatistics, LayerStatistics

from .obs_importance import LayerImportance, per_head

FlapMetric = Literal["wifv", "ifv", "wifn"]
FLAP_DEFAULT_METRIC: FlapMetric = "wifv"  # FLAP's own default: Var(x_j) ||W[:, j]||^2


def per_group(head_scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Sum consecutive query-head scores: one score per KV group."""
    return head_scores.reshape(-1, group_size).sum(dim=1)


# ---- magnitude: LLM-Pruner's L2 baseline ------------------------------------------------
def magnitude_importance(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, gate: torch.Tensor,
                         up: torch.Tensor, down: torch.Tensor, head_dim: int, group_size: int) -> LayerImportance:
    """Squared L2 norm of each coupled weight slice, averaged over the coupled layers.

    LLM-Pruner's group importance: sum w^2 over the unit's rows (q/k/v/gate/up) or columns
    (o/down) in every layer it spans, then the mean over those layers. Data-free.
    """
    q_rows = per_head(q.double().pow(2).sum(dim=1), head_dim)
    o_cols = per_head(o.double().pow(2).sum(dim=0), head_dim)
    k_rows = per_head(k.double().pow(2).sum(dim=1), head_dim)
    v_rows = per_head(v.double().pow(2).sum(dim=1), head_dim)
    q_heads = (q_rows + o_cols) / 2
    kv_groups = (per_group(q_rows, group_size) + k_rows + v_rows + per_group(o_cols, group_size)) / 4
    channels = (gate.double().pow(2).sum(dim=1) + up.double().pow(2).sum(dim=1) + down.double().pow(2).sum(dim=0)) / 3
    return LayerImportance(q_heads, kv_groups, channels)


# ---- Wanda-sp (FLAP's structured Wanda) -------------------------------------------------
def wanda_channel_scores(weight: torch.Tensor, stats: InputStatistics) -> torch.Tensor:
    """mean_i |W_ij| * ||x_j||: Wanda's |W| * activation norm, averaged over the output rows."""
    return weight.double().abs().mean(dim=0) * stats.square_mean.sqrt()


def wanda_sp_importance(o: torch.Tensor, down: torch.Tensor, stats: LayerStatistics, head_dim: int,
                        group_size: int) -> LayerImportance:
    """Heads sum their output-projection channel scores; a KV group sums its heads; MLP channels score down
    projection columns."""
    q_heads = per_head(wanda_channel_scores(o, stats.attention), head_dim)
    return LayerImportance(q_heads, per_group(q_heads, group_size), wanda_channel_scores(down, stats.mlp))


# ---- FLAP: fluctuation of the input channels ------------------------------------------
def fluctuation_scores(weight: torch.Tensor, stats: InputStatistics, metric: FlapMetric = "wifv") -> torch.Tensor:
    """FLAP's per-input-channel metric of an output projection W (out x in).

    wifv (default): Var(x_j) * ||W[:, j]||^2, the energy the channel's fluctuation puts into
    the output (its mean is what the bias compensation restores); ifv: Var(x_j) alone;
    wifn: mean_i |W_ij| * ||x_j|| (Wanda-like).
    """
    if metric == "ifv":
        return stats.variance.clone()
    if metric == "wifn":
        return wanda_channel_scores(weight, stats)
    return stats.variance * weight.double().pow(2).sum(dim=0)


def standardized(scores: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std over one module's channels, so layers and modules rank together."""
    return (scores - scores.mean()) / scores.std().clamp_min(1e-30)


def flap_adaptive_scores(o: torch.Tensor, down: torch.Tensor, stats: LayerStatistics, metric: FlapMetric,
                         head_dim: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised scores of one layer's KV groups and MLP channels for FLAP's global ranking.

    As FLAP's code: the attention metric is squared before standardising, and a head scores
    the mean of its channels' standardised scores; a KV group (our GQA unit) the mean over
    all channels of its query heads.
    """
    attention = standardized(fluctuation_scores(o, stats.attention, metric).pow(2))
    groups = attention.reshape(-1, group_size * head_dim).mean(dim=1)
    return groups, standardized(fluctuation_scores(down, stats.mlp, metric))


def flap_uniform_importance(o: torch.Tensor, down: torch.Tensor, stats: LayerStatistics, metric: FlapMetric,
                            head_dim: int, group_size: int) -> LayerImportance:
    """FLAP's uniform structure (UL-UM): heads sum their raw channel scores, groups their heads."""
    q_heads = per_head(fluctuation_scores(o, stats.attention, metric), head_dim)
    return LayerImportance(q_heads, per_group(q_heads, group_size), fluctuation_scores(down, stats.mlp, metric))
