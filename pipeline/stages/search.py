"""search: pick the architecture (an ArchSpec with keep-indices) with the recipe's method.

Writes `search/arch.json` and, for methods that fit new weights (e.g. a trained
replacement), `search/weights.safetensors`; what a method keeps (logs, checkpoints, cached
tables) goes through the folder stores it is given (method_store.py), and a search's
generations become convergence charts here. With `search.executor: ray` a search scores its candidates on a
pool of Ray actors (ray_executor.py) instead of here.
"""

from __future__ import annotations

from typing import Callable

import torch
from safetensors.torch import save_file

from ..compress import MethodContext, get_method, parse_options
from ..compress.search.executor import ExecutorFactory
from ..data import calibration_windows, load_corpus
from ..models.adapters import adapter_for
from ..models.spec import decoder_parameters, decoder_ratio, dense_decoder_parameters, total_parameters
from ..paths import cache_root, cpu_name
from .context import StageContext
from .convergence_chart import plot_convergence
from .method_store import FolderStore

NAME = "search"


def options(ctx: StageContext) -> dict:
    search = ctx.recipe.search
    return {"method": search.method, "ratio": search.ratio, "method_options": search.options,
            "model": ctx.model_options(), "calibration": ctx.calibration_options()}


def inputs(ctx: StageContext) -> list[str]:
    return []


def executor_factory(ctx: StageContext) -> ExecutorFactory | None:
    """Where the method scores its candidates (`search.executor`): None = here; not in the stage's options,
    because the result does not depend on it."""
    search = ctx.recipe.search
    if search.executor == "local":
        return None
    from .ray_executor import PoolShape, ray_executor_factory

    return ray_executor_factory(PoolShape(search.actors, search.cpus_per_actor, ctx.recipe.model.device))


def held_out_windows(ctx: StageContext) -> Callable[[int, int], torch.Tensor]:
    """(count, length) -> windows of the calibration split drawn with the next seed: apart from the calibration
    windows (random positions of the same split may overlap a little), for a method's held-out check."""
    def draw(count: int, length: int) -> torch.Tensor:
        corpus = load_corpus(ctx.recipe.data.calibration, "calibration", ctx.data_dir)
        return calibration_windows(ctx.source().tokenizer, corpus, count, length, ctx.recipe.seed + 1)
    return draw


def run(ctx: StageContext) -> None:
    search = ctx.recipe.search
    method = get_method(search.method)
    method_options = parse_options(method, search.options)
    executor = executor_factory(ctx)  # a missing ray extra fails here, before any work
    with ctx.artifact.stage(NAME, options=options(ctx)) as st:
        loaded = ctx.source()
        adapter = adapter_for(loaded.model.config)
        windows, provenance = ctx.calibration()
        method_ctx = MethodContext(
            model=loaded.model, tokenizer=loaded.tokenizer, adapter=adapter, base=adapter.dims(loaded.model.config),
            calibration=windows, seed=ctx.recipe.seed, progress=ctx.progress, outputs=FolderStore(st.dir),
            state=FolderStore(ctx.resume_dir(NAME)), cache=FolderStore(cache_root()), machine=cpu_name(),
            batch_size=ctx.recipe.data.batch_size, executor=executor, held_out=held_out_windows(ctx),
        )
        result = method.run(method_ctx, search.ratio, method_options)
        for chart in result.convergence:
            plot_convergence(st.dir / chart.chart, chart.history, chart.title)
        spec = result.spec.validate()
        (st.dir / "arch.json").write_text(spec.to_json() + "\n")
        if result.weights:
            save_file({k: v.contiguous() for k, v in result.weights.items()}, st.dir / "weights.safetensors")
        st.metrics.update(
            decoder_ratio=round(decoder_ratio(spec), 6),
            decoder_params=decoder_parameters(spec),
            dense_decoder_params=dense_decoder_parameters(spec.base),
            total_params=total_parameters(spec),
            layers=len(spec.layers),
            removed_layers=spec.removed_layers,
            calibration=provenance,
            **result.metrics,
        )
    ctx.drop_resume_dir(NAME)
