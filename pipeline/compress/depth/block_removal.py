"""Whole-block removal baselines: ShortGPT (one-shot, by Block Influence) and SLEB (greedy, by perplexity).

ShortGPT (Men et al. 2024, arXiv 2403.03853): BI_l = 1 - mean_t cos(h_l, h_{l+1}) on the dense
model; remove the blocks with the lowest BI, all at once.

SLEB (Song et al. 2024, arXiv 2402.09025): remove one block per round, each time the block whose
removal leaves the lowest calibration perplexity (total NLL over fixed calibration windows),
never the first or the last remaining block (the official code's barriers), until the ratio is met.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from tqdm.auto import tqdm

from pipeline.compress.calibration.layer_stream import LayerStream
from pipeline.compress.calibration.stream_similarity import sublayer_similarity
from pipeline.compress.registry import MethodContext, MethodOptions, MethodResult, register
from pipeline.models.spec import decoder_ratio
from pipeline.measures.perplexity import summed_nll

from .removal_counting import fewest_units_for, spec_without

HINT = "or a method that removes heads and channels instead"


def blocks_to_remove(ctx: MethodContext, ratio: float, order: list[int], method: str) -> list[int]:
    """The first k blocks of `order` (removal order), k the fewest that reach `ratio`."""
    count = fewest_units_for(ratio, lambda k: decoder_ratio(spec_without(ctx.base, layers=order[:k])), len(order),
                             method, "blocks", HINT)
    return sorted(order[:count])


# ---- ShortGPT -----------------------------------------------------------------
@register("shortgpt", "ShortGPT: remove the blocks with the lowest Block Influence (1 - cos(input, output))")
def run_shortgpt(ctx: MethodContext, ratio: float, options: MethodOptions) -> MethodResult:
    similarity = sublayer_similarity(ctx.model, ctx.adapter, ctx.calibration, ctx.batch_size, ctx.progress)
    influence = similarity.block_influence
    # One block must stay (a model needs an attention layer); ties keep the earlier block.
    order = sorted(range(ctx.base.num_layers), key=lambda l: (influence[l], l))[: ctx.base.num_layers - 1]
    removed = blocks_to_remove(ctx, ratio, order, "shortgpt")
    spec = spec_without(ctx.base, layers=removed, notes={"method": "shortgpt"})
    return MethodResult(spec, metrics={"block_influence": [round(b, 6) for b in influence], "removed": removed})


# ---- SLEB ---------------------------------------------------------------------
class SLEBOptions(MethodOptions):
    fitness_windows: int = 8  # calibration windows scoring each candidate removal (the paper: 128 x 2048 tokens)
    protect_ends: bool = True  # never remove the first or the last remaining block (the official code's barriers)
    cache_order: bool = True  # keep the greedy order in the shared cache: resumes, and other ratios reuse it


class BlockSkipScorer:
    """Calibration NLL of the dense model with blocks skipped.

    A candidate that skips block j shares every block before j with the current model, so the
    stream entering j is computed once per round and each candidate runs only the blocks after j.
    """

    def __init__(self, model, adapter, windows: torch.Tensor, batch_size: int = 1) -> None:
        self.stream = LayerStream(model, adapter, windows, batch_size)
        self.batches = list(windows.split(batch_size))
        self.layers = adapter.layers(model)
        self.norm, self.head = adapter.final_norm(model), adapter.lm_head(model)

    @torch.no_grad()
    def block_inputs(self, alive: list[int]) -> dict[int, list[torch.Tensor]]:
        """The stream entering each alive block of the model made of the alive blocks."""
        hidden, inputs = self.stream.hidden, {}
        for block in alive:
            inputs[block] = hidden
            if block != alive[-1]:
                hidden = self.stream.run(self.layers[block], hidden)
        return inputs

    @torch.no_grad()
    def nll_from(self, hidden: list[torch.Tensor], blocks: list[int]) -> float:
        for block in blocks:
            hidden = self.stream.run(self.layers[block], hidden)
        return self.nll(hidden)

    @torch.no_grad()
    def nll(self, hidden: list[torch.Tensor]) -> float:
        """Mean next-token NLL of the final streams over every window."""
        total, count = 0.0, 0
        for stream, ids in zip(hidden, self.batches, strict=True):
            for row, row_ids in zip(stream, ids):  # one window of logits at a time bounds memory
                window_nll, tokens = summed_nll(self.head(self.norm(row[:-1])), row_ids[1:])
                total, count = total + window_nll, count + tokens
        return total / count


def greedy_removal_order(scorer: BlockSkipScorer, num_layers: int, rounds: int, protect_ends: bool,
                         done: list[dict] | None = None, on_round=None, progress: bool = True) -> list[dict]:
    """SLEB's rounds: [{"removed": block, "ppl": calibration perplexity after removing it}, ...]."""
    log = list(done or [])
    alive = [b for b in range(num_layers) if b not in {r["removed"] for r in log}]
    for _ in tqdm(range(len(log), rounds), desc="sleb", unit="block", disable=not progress):
        inputs = scorer.block_inputs(alive)
        candidates = alive[1:-1] if protect_ends else alive
        scores = {j: scorer.nll_from(inputs[j], [b for b in alive if b > j]) for j in candidates}
        best = min(candidates, key=lambda j: (scores[j], j))
        alive.remove(best)
        log.append({"removed": best, "ppl": math.exp(scores[best])})
        if on_round is not None:
            on_round(log)
    return log


@register("sleb", "SLEB: greedily remove the block whose removal keeps calibration perplexity lowest",
          SLEBOptions)
def run_sleb(ctx: MethodContext, ratio: float, options: SLEBOptions) -> MethodResult:
    windows = ctx.calibration[: options.fitness_windows]
    most = ctx.base.num_layers - (2 if options.protect_ends else 1)
    # The greedy order does not depend on the ratio: find how many rounds the ratio needs first.
    need = fewest_units_for(ratio, lambda k: decoder_ratio(spec_without(ctx.base, layers=range(1, k + 1))), most,
                            "sleb", "blocks", HINT)
    cache = ctx.cache if options.cache_order else None
    name = order_cache_name(ctx.model, windows, options) if cache is not None else ""
    done = ((cache.load(name) or {}).get("rounds") or []) if cache is not None else []
    scorer = BlockSkipScorer(ctx.model, ctx.adapter, windows, ctx.batch_size)
    log = greedy_removal_order(scorer, ctx.base.num_layers, need, options.protect_ends, done,
                               (lambda rounds: cache.save(name, {"rounds": rounds})) if cache is not None else None,
                               ctx.progress)[:need]
    removed = sorted(r["removed"] for r in log)
    spec = spec_without(ctx.base, layers=removed, notes={"method": "sleb"})
    return MethodResult(spec, metrics={"removed": removed, "removal_order": log,
                                       "fitness_tokens": int(windows.numel())})


def order_cache_name(model, windows: torch.Tensor, options: SLEBOptions) -> str:
    """Where SLEB's finished rounds are kept in the shared cache: keyed by the model's weights, the calibration
    windows and the options. The greedy order does not depend on the ratio, so an interrupted run resumes and a
    run at another ratio reuses every round already computed."""
    digest = hashlib.sha256(json.dumps(options.model_dump(), sort_keys=True).encode())
    digest.update(windows.numpy().tobytes())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return f"sleb/{digest.hexdigest()[:32]}.json"
