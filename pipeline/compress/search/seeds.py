"""Generation 0 of the search, and the budget every candidate must meet.

The uniform seeds are the paper's initialisation, one per attention shape at the widest common MLP
width the budget allows; an allocated seed keeps a uniform seed's heads and total MLP channels with the
widths spread over the layers by what the reform cannot recover (mlp_width_costs.py).
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.compress.importance.mlp_width_costs import allocate_widths
from pipeline.compress.importance.obs_importance import LayerImportance
from pipeline.compress.width.legal_widths import attention_shapes, top_units
from pipeline.compress.width.uniform import uniform_spec
from pipeline.models.spec import BaseDims

from .checkpoints import WidthCosts
from .generations import EvolutionOptions
from .genome import Budget, Genome, SearchSpace, genome_from_spec, layer_shapes
from .latency_table import LatencyTable


def make_budget(base: BaseDims, ratio: float, options: EvolutionOptions, table: LatencyTable | None) -> Budget:
    """The parameter window [ratio - tolerance, ratio]; with a speed-up target the ratio is only a cap
    and the window is on the predicted speed-up instead."""
    if table is None:
        return Budget(base, max_ratio=ratio, min_ratio=ratio - options.tolerance)
    target = options.latency_speedup
    return Budget(base, max_ratio=ratio, min_ratio=0.0,
                  speedup=lambda genome: table.speedup(layer_shapes(genome, base)),
                  min_speedup=target, max_speedup=target * (1 + options.latency_tolerance))


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
