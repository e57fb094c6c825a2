"""Generation 0 of the search, and the budget every candidate must meet.

The uniform seeds are the paper's initialisation, one per attention shape at the widest common MLP
width the budget allows; an allocated seed keeps a uniform seed's heads and total MLP channels with the
widths spread over the layers by what the reform cannot recover (mlp_width_costs.py); the FLAP seed is
the model FLAP's global allocation keeps at the budget's cap (its KV groups and channels, from the
fluctuation scores of the importance pass), so the search starts from the best baseline we measured.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pipeline.compress.importance.mlp_width_costs import allocate_widths
from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.compress.width.layer_plans import global_plan
from pipeline.compress.width.legal_widths import attention_shapes, top_units
from pipeline.compress.width.uniform import uniform_spec
from pipeline.models.spec import BaseDims

from .checkpoints import WidthCosts
from .generations import EvolutionOptions
from .genome import Budget, Genome, LayerGene, SearchSpace, genome_from_spec, layer_shapes
from .latency_table import LatencyTable

SEED_KINDS = ("uniform", "allocated", "flap")  # where a seed comes from, in the order the final choice lists them


def make_budget(base: BaseDims, ratio: float, options: EvolutionOptions, table: LatencyTable | None) -> Budget:
    """The parameter window [ratio - tolerance, ratio]; with a speed-up target the ratio is only a cap
    and the window is on the predicted speed-up instead."""
    if table is None:
        return Budget(base, max_ratio=ratio, min_ratio=ratio - options.tolerance, out_bias=options.compensate)
    target = options.latency_speedup
    return Budget(base, max_ratio=ratio, min_ratio=0.0,
                  speedup=lambda genome: table.speedup(layer_shapes(genome, base)),
                  min_speedup=target, max_speedup=target * (1 + options.latency_tolerance), out_bias=options.compensate)


def seed_genomes(base: BaseDims, importance: list[LayerImportance], space: SearchSpace, budget: Budget) -> list[Genome]:
    """Per attention shape, the uniform architecture with the widest common MLP width the budget allows."""
    widths, seeds = space.widths(), []
    for shape in attention_shapes(base):
        low, high, best = 0, len(widths) - 1, None
        while low <= high:  # verdicts only grow with width: bisect for the widest that does not overshoot
            middle = (low + high) // 2
            genome = genome_from_spec(uniform_spec(base, importance, shape, [widths[middle]] * base.num_layers))
            if budget.verdict(genome) == "shrink":
                high = middle - 1
            else:
                best, low = genome, middle + 1
        if best is not None:
            seeds.append(best)
    return seeds


def allocated_genomes(seeds: list[Genome], importance: list[LayerImportance], width_costs: WidthCosts) -> list[Genome]:
    """Per uniform seed, the same heads and total MLP channels, the widths spread over the layers by their removal
    costs (mlp_width_costs.py), each layer keeping its most important channels."""
    allocated = []
    for seed in seeds:
        widths = allocate_widths(width_costs, sum(len(gene.mlp_channels) for gene in seed))
        allocated.append(tuple(replace(gene, mlp_channels=top_units(scores.mlp_channels, width))
                               for gene, scores, width in zip(seed, importance, widths)))
    return allocated


FlapScores = list[tuple[torch.Tensor, torch.Tensor]]  # per layer, FLAP's standardised KV-group and channel scores


def flap_genome(base: BaseDims, scores: FlapScores, budget: Budget, mlp_multiple: int) -> Genome:
    """The model FLAP (AL-AM) keeps within the budget's cap: its global plan of KV groups and MLP widths, each
    layer keeping its best-scoring groups (with all their query heads) and channels. A sublayer the plan empties
    is skipped; its dormant mask keeps the best group or the narrowest width's best channels."""
    groups, channels = [g for g, _ in scores], [c for _, c in scores]
    plans = global_plan(base, budget.max_ratio, groups, channels, mlp_multiple, out_bias=budget.out_bias)
    genes = []
    for plan, group_scores, channel_scores in zip(plans, groups, channels, strict=True):
        kept_groups = top_units(group_scores, plan.shape.num_kv_heads if plan.shape else 1)
        q_heads = tuple(h for g in kept_groups for h in range(g * base.group_size, (g + 1) * base.group_size))
        mlp = top_units(channel_scores, plan.width or mlp_multiple)
        genes.append(LayerGene(q_heads, mlp, attention=plan.shape is not None, mlp=plan.width > 0))
    return tuple(genes)
