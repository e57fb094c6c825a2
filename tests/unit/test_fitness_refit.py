"""Reform-aware fitness: the search scores a candidate as the reform stage will ship it."""

from dataclasses import replace

import pytest
import torch

from pipeline.compress.search.candidate_scorer import CandidateScorer
from pipeline.compress.search.generations import EvolutionOptions
from pipeline.compress.search.evolution import run_evolution
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.search.fitness_refit import ProjectionRefit, held_out_moments, projection_grams
from pipeline.compress.importance.obs_importance import layer_importance
from pipeline.compress.reform.sequential_reform import PROJECTIONS, ReformSettings, output_projection, reform_sculpted
from pipeline.compress.reform.projection_corrections import least_squares_refit
from pipeline.compress.registry import MethodContext
from pipeline.errors import SculptError
from pipeline.models.adapters import adapter_for
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec
from tests.factories import tiny_model


def _refit(model, windows) -> ProjectionRefit:
    adapter = adapter_for(model.config)
    moments = []
    layer_importance(model, adapter, windows, progress=False,
                     on_layer=lambda _i, grams, _s: moments.append({m: grams[m].mean() for m in PROJECTIONS}))
    return ProjectionRefit(model, adapter, moments)


def _pruned(model, mlp_kept=tuple(range(0, 64, 2)) + (1, 3, 5)) -> ArchSpec:
    """One query head per GQA group and some MLP channels gone in every layer; layer 2 skips its attention."""
    dense = ArchSpec.dense(adapter_for(model.config).dims(model.config))
    layers = [replace(layer, num_heads=4, q_heads=(0, 1, 3, 4), intermediate_size=len(mlp_kept),
                      mlp_channels=mlp_kept) for layer in dense.layers]
    layers[2] = replace(layers[2], attention="skip", num_heads=0, num_kv_heads=0, q_heads=None, kv_heads=None)
    return replace(dense, layers=tuple(layers)).validate()


def _windows(n=4, length=32, seed=0):
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def test_the_refit_matches_the_least_squares_of_the_reform_stage_and_is_reused():
    model = tiny_model("llama")
    windows = _windows()
    refit = _refit(model, windows)
    adapter = adapter_for(model.config)
    kept = torch.tensor([0, 2, 5, 9, 11, 40, 63])
    grams = []
    layer_importance(model, adapter, windows, progress=False,
                     on_layer=lambda _i, g, _s: grams.append(g["down_proj"].mean()))
    down = output_projection(adapter, adapter.layers(model)[1], "down_proj").weight.detach()
    expected = least_squares_refit(down, grams[1], kept)
    assert torch.allclose(refit.kept_weight(1, "down_proj", kept).double(), expected, rtol=1e-4, atol=1e-5)
    refit.kept_weight(1, "down_proj", kept.clone())
    assert (refit.stats.solves, refit.stats.reused) == (1, 1)


def test_the_reform_aware_score_is_the_perplexity_of_the_model_the_reform_stage_ships():
    model = tiny_model("llama")
    windows = _windows()
    spec = _pruned(model)
    shipped = slice_model(model, spec)
    reform_sculpted(shipped, model, spec, windows, ReformSettings("least-squares", sequential=False), progress=False)
    expected = calibration_perplexity(shipped, windows)
    plain = CandidateScorer(model, windows).perplexity(spec)
    scorer = CandidateScorer(model, windows, refit=_refit(model, windows))
    assert scorer.perplexity(spec) == pytest.approx(expected, rel=1e-4)
    assert plain != pytest.approx(expected, rel=1e-3)  # the correction changed the score (it is not a no-op)

    # A sibling differing only in layer 0's MLP: layers 1-3 run again, their corrections are reused.
    before = (scorer.refit.stats.solves, scorer.refit.stats.reused)
    layers = list(spec.layers)
    layers[0] = replace(layers[0], intermediate_size=32, mlp_channels=tuple(range(32)))
    scorer.perplexity(replace(spec, layers=tuple(layers)).validate())
    solves, reused = scorer.refit.stats.solves - before[0], scorer.refit.stats.reused - before[1]
    assert (solves, reused) == (1, 6)  # layer 0: down_proj solved, o_proj reused; layers 1-3: all 5 reused


def test_held_out_moments_leave_out_the_fitness_tokens_exactly():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    calibration = _windows(n=5)
    totals = []
    layer_importance(model, adapter, calibration, progress=False,
                     on_layer=lambda _i, g, _s: totals.append({m: g[m] for m in PROJECTIONS}))
    fitness = calibration[:2, :20]  # the first 20 tokens of two windows: causal, so the same activations
    held = [held_out_moments(t, f) for t, f in zip(totals, projection_grams(model, adapter, fitness))]
    rest_tokens = torch.cat([calibration[:2, 20:].reshape(-1), calibration[2:].reshape(-1)]).numel()
    expected = projection_grams(model, adapter, calibration[2:])  # whole windows: rebuild the rest by hand
    tail = [{m: g.gram for m, g in layer.items()} for layer in projection_grams(model, adapter, calibration[:2])]
    head = [{m: g.gram for m, g in layer.items()} for layer in projection_grams(model, adapter, fitness)]
    for i, layer in enumerate(held):
        for module, moment in layer.items():
            rest = expected[i][module].gram + tail[i][module] - head[i][module]
            assert torch.allclose(moment.double(), rest / rest_tokens, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="all the calibration tokens"):
        held_out_moments(totals[0], projection_grams(model, adapter, calibration)[0])


def test_a_reform_aware_search_scores_corrected_candidates_and_says_so():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    ctx = MethodContext(model=model, tokenizer=None, adapter=adapter, base=adapter.dims(model.config),
                        calibration=_windows(seed=1), seed=7, progress=False)
    options = dict(population=4, mutations=2, crossovers=1, parents=2, generations=1, fitness_windows=2,
                   fitness_seqlen=16, mlp_multiple=8, tolerance=0.1)
    plain = run_evolution(ctx, 0.7, EvolutionOptions(**options)).metrics
    aware = run_evolution(ctx, 0.7, EvolutionOptions(**options, fitness_reform="least-squares")).metrics
    assert plain["fitness_reform"] == "none" and "refit_solves" not in plain
    assert aware["fitness_reform"] == "least-squares" and aware["refit_solves"] > 0
    assert aware["seed_ppl"] != pytest.approx(plain["seed_ppl"], rel=1e-3)  # the seed was scored corrected
    whole = EvolutionOptions(**{**options, "fitness_windows": 4, "fitness_seqlen": 0}, fitness_reform="least-squares")
    with pytest.raises(SculptError, match="fitness windows are all of them"):
        run_evolution(ctx, 0.7, whole)
