"""The evolutionary search: its operators keep masks overlapping, legal and in budget; its scorer
matches the sliced model; an interrupted search resumes from its checkpoint."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.compress.search import evolution as evolution_method
from pipeline.compress.search import executor as executor_module
from pipeline.compress.search.candidate_scorer import CandidateScorer
from pipeline.compress.importance.greedy_channels import greedy_channel_scores
from pipeline.compress.search.generations import EvolutionOptions
from pipeline.compress.search.genome import (Budget, LayerGene, Rates, SearchSpace, UnitScores, crossover,
                                               genome_from_dict, genome_parameters, genome_ratio, genome_spec,
                                               kv_groups, mutate, overlap_floor, repair)
from pipeline.compress.search.evolution import make_budget, run_evolution, seed_genomes
from pipeline.compress.search.final_choice import reformed_choice, reformed_perplexity
from pipeline.compress.search.generations import Candidate
from pipeline.compress.calibration.calibration_perplexity import calibration_perplexity
from pipeline.compress.importance.obs_importance import LayerImportance, layer_importance
from pipeline.compress.search.latency_table import LatencyTable, shape_key
from pipeline.compress.importance.mlp_width_costs import output_gradient_covariance, removal_costs
from pipeline.compress.registry import MethodContext
from pipeline.compress.width.legal_widths import attention_shapes, top_units
from pipeline.models.adapters import adapter_for
from pipeline.stages.method_store import FolderStore
from pipeline.models.slicing import slice_model
from pipeline.models.spec import BaseDims, decoder_parameters, dense_decoder_parameters
from tests.factories import tiny_model

# SmolLM2's attention layout (3 KV groups of 3 query heads) with a small MLP, so masks are cheap.
BASE = BaseDims("llama", num_layers=6, hidden_size=64, num_heads=9, num_kv_heads=3, head_dim=8,
                intermediate_size=256, vocab_size=100)
ALPHA = 0.8


def _space(scores: bool = True, **kw) -> SearchSpace:
    rng = np.random.default_rng(1)
    unit_scores = tuple(UnitScores(rng.random(9) + 0.01, rng.random(3) + 0.01, rng.random(256) + 0.01)
                        for _ in range(BASE.num_layers)) if scores else None
    return SearchSpace(BASE, unit_scores, mlp_multiple=16, alpha=ALPHA, **kw)


def _importance(seed: int = 0) -> list[LayerImportance]:
    gen = torch.Generator().manual_seed(seed)
    return [LayerImportance(torch.rand(9, generator=gen), torch.rand(3, generator=gen), torch.rand(256, generator=gen))
            for _ in range(BASE.num_layers)]


def _seeds(budget: Budget, space: SearchSpace):
    """The uniform seeds, walked into the budget as generation 0 does."""
    rng = np.random.default_rng(0)
    seeds = (repair(s, space, budget, rng) for s in seed_genomes(BASE, _importance(), space, budget))
    return [s for s in seeds if s is not None]


def _budget(ratio: float = 0.7, tolerance: float = 0.02) -> Budget:
    return make_budget(BASE, ratio, EvolutionOptions(tolerance=tolerance), None)


@pytest.mark.parametrize("scores", [True, False], ids=["importance", "uniform"])
def test_mutated_masks_keep_alpha_of_their_parent_and_stay_gqa_legal(scores):
    space, budget = _space(scores), _budget()
    rng = np.random.default_rng(0)
    strong = Rates(mask=0.9, ratio=0.6, depth=0.3)
    checked_heads = checked_mlp = changed = 0
    for parent in _seeds(budget, space):
        for _ in range(40):
            child = mutate(parent, space, strong, rng)
            if not any(g.has_attention for g in child):  # the budget rejects these; nothing to build
                continue
            genome_spec(child, BASE)  # raises on a GQA-illegal head set or a bad width
            for old, new in zip(parent, child):
                if old.has_attention and new.has_attention:
                    shared = len(set(old.q_heads) & set(new.q_heads))
                    assert shared >= overlap_floor(len(old.q_heads), len(new.q_heads), ALPHA)
                    groups = kv_groups(new.q_heads, BASE)
                    assert len(new.q_heads) % len(groups) == 0  # the same heads per kept group
                    checked_heads += 1
                if old.has_mlp and new.has_mlp:
                    shared = len(set(old.mlp_channels) & set(new.mlp_channels))
                    assert shared >= overlap_floor(len(old.mlp_channels), len(new.mlp_channels), ALPHA)
                    assert len(new.mlp_channels) in space.widths()
                    checked_mlp += 1
                changed += old != new
            parent = child  # walk: overlap must hold step after step, not only from the seed
    assert checked_heads > 100 and checked_mlp > 100 and changed > 100


def test_the_overlap_floor_is_feasible_below_alpha():
    # Algorithm 1 as printed (threshold alpha * N) cannot keep a mask at ratio 0.5 < alpha; ours must.
    space = _space()
    rng = np.random.default_rng(3)
    parent = LayerGene(tuple(range(9)), tuple(range(0, 256, 2)))  # 128 of 256 channels
    genome = (parent,) * BASE.num_layers
    swaps = 0
    for _ in range(30):
        child = mutate(genome, space, Rates(mask=1.0, ratio=0.0, depth=0.0), rng)[0]
        assert len(child.mlp_channels) == 128
        shared = len(set(child.mlp_channels) & set(parent.mlp_channels))
        assert overlap_floor(128, 128, ALPHA) <= shared
        swaps += shared < 128
    assert swaps > 20  # a mask mutation really swaps channels


def test_repaired_mutants_fall_inside_the_parameter_window():
    space, budget = _space(), _budget(ratio=0.6, tolerance=0.02)
    rng = np.random.default_rng(5)
    seeds = _seeds(budget, space)
    assert seeds and all(0.58 - 1e-9 <= genome_ratio(s, BASE) <= 0.6 + 1e-9 for s in seeds)
    fitted = 0
    for i in range(200):
        child = repair(mutate(seeds[i % len(seeds)], space, Rates(0.6, 0.5, 0.3), rng), space, budget, rng)
        if child is not None:
            assert 0.58 - 1e-9 <= genome_ratio(child, BASE) <= 0.6 + 1e-9
            assert decoder_parameters(genome_spec(child, BASE)) == genome_parameters(child, BASE)
            assert (decoder_parameters(genome_spec(child, BASE, out_bias=True))  # the compensation biases count
                    == genome_parameters(child, BASE, out_bias=True) > genome_parameters(child, BASE))
            fitted += 1
    assert fitted > 150


def test_a_latency_budget_is_met_by_the_predicted_speed_up():
    # a table where cost follows parameters: MLP by width, attention by heads; a constant for the rest
    table = LatencyTable(attention={shape_key(s): 1e-4 * s.num_heads + 0.5e-4 * s.num_kv_heads for s in attention_shapes(BASE)},
                         mlp={w: 2e-6 * w for w in _space().widths()}, constant=1e-3, dense_step=0.0, context=64)
    full = table.attention["3x3"] + table.mlp[256]
    table = LatencyTable(table.attention, table.mlp, table.constant, 1e-3 + BASE.num_layers * full, 64)
    options = EvolutionOptions(latency_speedup=1.5, latency_tolerance=0.05)
    budget = make_budget(BASE, 0.9, options, table)
    space, rng = _space(), np.random.default_rng(2)
    seeds = _seeds(budget, space)
    assert seeds
    for genome in seeds + [repair(mutate(seeds[0], space, Rates(0.5, 0.5, 0.3), rng), space, budget, rng)
                           for _ in range(50)]:
        if genome is None:
            continue
        assert 1.5 <= budget.speedup(genome) <= 1.5 * 1.05 + 1e-9
        assert genome_ratio(genome, BASE) <= 0.9 + 1e-9


def test_crossover_children_are_legal_models_with_every_layer_from_a_parent():
    model = tiny_model("llama")
    base = adapter_for(model.config).dims(model.config)
    space = SearchSpace(base, None, mlp_multiple=8)
    budget = make_budget(base, 0.7, EvolutionOptions(tolerance=0.1), None)
    importance = [LayerImportance(torch.rand(6), torch.rand(2), torch.rand(64)) for _ in range(base.num_layers)]
    rng = np.random.default_rng(4)
    pool = [mutate(s, space, Rates(0.8, 0.8, 0.5), rng) for s in seed_genomes(base, importance, space, budget)
            for _ in range(4)]
    ids = torch.randint(0, 100, (1, 12))
    for _ in range(20):
        a, b = (pool[int(i)] for i in rng.choice(len(pool), 2, replace=False))
        child = crossover(a, b, rng)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
        if not any(g.has_attention for g in child):
            continue
        logits = slice_model(model, genome_spec(child, base)).eval()(ids).logits
        assert torch.isfinite(logits).all()


def test_the_scorer_matches_the_sliced_model_also_from_its_prefix_cache():
    model = tiny_model("llama")
    base = adapter_for(model.config).dims(model.config)
    windows = torch.randint(0, 100, (3, 24), generator=torch.Generator().manual_seed(0))
    space = SearchSpace(base, None, mlp_multiple=8)
    importance = [LayerImportance(torch.rand(6), torch.rand(2), torch.rand(64)) for _ in range(base.num_layers)]
    seed = seed_genomes(base, importance, space, make_budget(base, 0.7, EvolutionOptions(tolerance=0.1), None))[0]
    skipping = (seed[0], LayerGene(seed[1].q_heads, seed[1].mlp_channels, attention=False), seed[2],
                LayerGene(seed[3].q_heads, seed[3].mlp_channels, kept=False))
    sibling = seed[:3] + (LayerGene(seed[3].q_heads, seed[3].mlp_channels[:8]),)  # shares 3 leading layers
    scorer = CandidateScorer(model, windows)
    reused = []
    for genome in (seed, skipping, sibling):
        spec = genome_spec(genome, base)
        expected = calibration_perplexity(slice_model(model, spec), windows)
        before = scorer.stats.layers_reused
        assert scorer.perplexity(spec) == pytest.approx(expected, rel=1e-4)
        reused.append(scorer.stats.layers_reused - before)
    assert reused == [0, 1, 3]  # each started after the leading layers it shares with one scored before


def _context(tmp_path, name):
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    windows = torch.randint(3, 100, (4, 32), generator=torch.Generator().manual_seed(1))
    out, state = tmp_path / name / "out", tmp_path / name / "state"
    out.mkdir(parents=True)
    state.mkdir(parents=True)
    return MethodContext(model=model, tokenizer=None, adapter=adapter, base=adapter.dims(model.config),
                         calibration=windows, seed=7, progress=False, outputs=FolderStore(out),
                         state=FolderStore(state))


OPTIONS = EvolutionOptions(population=4, mutations=2, crossovers=1, parents=2, generations=2, fitness_windows=2,
                           fitness_seqlen=16, mlp_multiple=8, tolerance=0.1)


def test_an_interrupted_search_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(
        tmp_path, monkeypatch):
    whole = run_evolution(_context(tmp_path, "whole"), 0.7, OPTIONS)
    log = (tmp_path / "whole" / "out" / "search.jsonl").read_text().splitlines()
    assert [json.loads(row)["generation"] for row in log] == [0, 1, 2]
    assert [row["generation"] for row in whole.convergence[0].history] == [0, 1, 2]

    scored, first_generation = [], json.loads(log[0])["scored"]
    original = CandidateScorer.score

    def interrupted(self, spec):
        if len(scored) == first_generation + 1:  # a little into generation 1
            raise KeyboardInterrupt
        scored.append(spec)
        return original(self, spec)

    ctx = _context(tmp_path, "cut")
    monkeypatch.setattr(CandidateScorer, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_evolution(ctx, 0.7, OPTIONS)
    checkpoint = json.loads((ctx.state.folder / "evolution.json").read_text())
    assert 0 <= checkpoint["generation"] < OPTIONS.generations

    rescored = []

    def counted(self, spec):
        rescored.append(spec)
        return original(self, spec)

    monkeypatch.setattr(CandidateScorer, "score", counted)
    resumed = run_evolution(ctx, 0.7, OPTIONS)
    assert resumed.metrics["resumed_from_generation"] == checkpoint["generation"]
    assert resumed.metrics["candidates_scored"] == whole.metrics["candidates_scored"]
    assert len(rescored) == whole.metrics["candidates_scored"] - len(checkpoint["seen"])  # nothing scored twice
    assert resumed.spec.to_dict() == whole.spec.to_dict()
    assert resumed.metrics["search_ppl"] == pytest.approx(whole.metrics["search_ppl"], rel=1e-6)
    rows = [json.loads(r) for r in (ctx.outputs.folder / "search.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2]  # the log still covers every generation
    assert whole.metrics["search_ppl"] <= whole.metrics["seed_ppl"]


def test_a_checkpoint_of_another_search_is_not_resumed(tmp_path):
    ctx = _context(tmp_path, "a")
    run_evolution(ctx, 0.7, OPTIONS)
    (ctx.state.folder / "evolution.json").write_text(json.dumps({"fingerprint": "other", "generation": 3}))
    again = run_evolution(ctx, 0.7, OPTIONS)
    assert again.metrics["resumed_from_generation"] is None and again.metrics["generations"] == OPTIONS.generations


def test_sculpt_run_with_method_evolution_writes_the_spec_log_and_plot(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli
    from tests.factories import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 13}." for i in range(300)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: fast\nsearch:\n  method: evolution\n"  # the method's own defaults
                      "  options: {population: 4, mutations: 2, crossovers: 1, parents: 2, generations: 1, "
                      "fitness_windows: 2, fitness_seqlen: 16, mlp_multiple: 8}\n")
    result = CliRunner().invoke(cli, ["run", str(recipe), "--model", str(model), "--calib-corpus", str(corpus),
                                      "--eval-corpus", str(corpus), "--calib-samples", "2", "--calib-seqlen", "32",
                                      "--ratio", "0.6", "--stages", "search", "--out", str(tmp_path / "art"), "--quiet"],
                                env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stage = tmp_path / "art" / "v0001" / "search"
    spec = json.loads((stage / "arch.json").read_text())
    assert spec["notes"]["method"] == "evolution"
    assert len((stage / "search.jsonl").read_text().splitlines()) == 2
    assert (stage / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((tmp_path / "art" / "v0001" / "manifest.json").read_text())
    metrics = manifest["stages"][0]["metrics"]
    assert 0.59 - 1e-6 <= metrics["decoder_ratio"] <= 0.6 + 1e-6


TRACKS = OPTIONS.model_copy(update=dict(skip_free_track=True, final_choice="reformed", final_candidates=2,
                                        final_windows=2))


def test_the_reformed_final_choice_weighs_a_skip_free_track_and_the_uniform_seed(tmp_path):
    ctx = _context(tmp_path, "tracks")
    result = run_evolution(ctx, 0.7, TRACKS)
    rows = result.metrics["final_choice"]
    assert {row["track"] for row in rows} == {"main", "skip-free"}
    assert sum(row["origin"].startswith("uniform seed") for row in rows) == 2  # kept when nothing beats them
    chosen = [row for row in rows if row["chosen"]]
    tied = [row for row in rows
            if row["reformed_ppl"] <= min(r["reformed_ppl"] for r in rows) * (1 + TRACKS.final_tolerance)]
    assert len(chosen) == 1 and chosen[0]["search_ppl"] == min(row["search_ppl"] for row in tied)
    assert result.metrics["chosen_track"] == chosen[0]["track"] == result.spec.notes.get("track")
    assert json.loads((ctx.outputs.folder / "final_choice.json").read_text()) == rows
    # the returned architecture is the one scored, after ADMM reform (fitted on the windows before the held-out two)
    fit, held = ctx.calibration[:-2], ctx.calibration[-2:]
    reformed = reformed_perplexity(ctx.model, result.spec, fit, held)
    assert reformed == pytest.approx(chosen[0]["reformed_ppl"], rel=1e-5)
    assert reformed != pytest.approx(calibration_perplexity(slice_model(ctx.model, result.spec), held), rel=1e-4)
    # the skip-free track never skipped a sublayer or removed a layer
    track = json.loads((ctx.state.folder / "evolution-skip-free.json").read_text())
    assert track["parents"] and all(gene.attention and gene.mlp and gene.kept for parent in track["parents"]
                                    for gene in genome_from_dict(parent["genome"]))
    assert (ctx.outputs.folder / "search-skip-free.jsonl").is_file()
    assert [chart.chart for chart in result.convergence] == ["convergence.png", "convergence-skip-free.png"]
    # the main track is the search a one-track run makes: same best candidate
    alone = run_evolution(_context(tmp_path, "alone"), 0.7, OPTIONS)
    assert result.metrics["tracks"]["main"]["search_ppl"] == pytest.approx(alone.metrics["search_ppl"], rel=1e-6)


def test_a_tie_after_reform_goes_to_the_structure_that_needs_less_of_it():
    genome = _seeds(_budget(), _space())[0]
    search = SimpleNamespace(parents=[Candidate(genome, 30.0, "p")], seeds=[Candidate(genome, 40.0, "u")],
                             seed_kinds={"u": "uniform"})

    def choose(reformed: list[float], tolerance: float) -> str:
        choice = reformed_choice({"main": search}, 1, BASE, False, lambda specs, done: reformed, tolerance)
        assert [row["chosen"] for row in choice.rows].count(True) == 1
        return next(row["origin"] for row in choice.rows if row["chosen"])

    assert choose([20.3, 20.0], 0.0) == "uniform seed 1"  # strictly by the reformed score
    assert choose([20.3, 20.0], 0.02) == "parent 1"  # 1.5% apart: tied, the parent's fitness is lower
    assert choose([20.5, 20.0], 0.02) == "uniform seed 1"  # 2.5% apart: not a tie
    assert choose([20.0, 20.3], 0.02) == "parent 1"


def test_a_finished_two_track_search_resumes_both_tracks_and_only_rescores_the_finalists(tmp_path, monkeypatch):
    ctx = _context(tmp_path, "again")
    first = run_evolution(ctx, 0.7, TRACKS)
    searched, reformed = [], []
    search_score, reform_score = CandidateScorer.score, executor_module.reformed_perplexity
    monkeypatch.setattr(CandidateScorer, "score", lambda self, spec: searched.append(spec) or search_score(self, spec))
    monkeypatch.setattr(executor_module, "reformed_perplexity",
                        lambda *args, **kwargs: reformed.append(args) or reform_score(*args, **kwargs))
    again = run_evolution(ctx, 0.7, TRACKS)
    assert not searched and len(reformed) == len(first.metrics["final_choice"])
    assert {t: run["resumed_from_generation"] for t, run in again.metrics["tracks"].items()} == \
        {"main": OPTIONS.generations, "skip-free": OPTIONS.generations}
    assert again.spec.to_dict() == first.spec.to_dict()


def test_the_final_choice_options_are_checked(tmp_path):
    from pipeline.errors import SculptError

    with pytest.raises(SculptError, match="raise --calib-samples or lower the final_windows"):
        run_evolution(_context(tmp_path, "few"), 0.7, TRACKS.model_copy(update={"final_windows": 3}))
    with pytest.raises(ValueError, match="skip genes off"):
        EvolutionOptions(skip_free_track=True, attention_skip=False, mlp_skip=False, layer_removal=False)
    with pytest.raises(ValueError, match="final_candidates"):
        EvolutionOptions(final_choice="reformed", parents=2, final_candidates=3)


def test_allocated_seeds_keep_a_uniform_seeds_heads_and_size_and_reach_the_final_choice(tmp_path, monkeypatch):
    ctx = _context(tmp_path, "allocated")
    options = TRACKS.model_copy(update={"allocated_seeds": True})
    result = run_evolution(ctx, 0.7, options)
    assert sum(row["origin"].startswith("allocated seed") for row in result.metrics["final_choice"]) == 2
    state = json.loads((ctx.state.folder / "evolution.json").read_text())
    kinds = {kind: [genome_from_dict(s["genome"]) for s in state["seeds"] if s["kind"] == kind]
             for kind in ("uniform", "allocated")}
    assert kinds["uniform"] and kinds["allocated"]
    for allocated in kinds["allocated"]:
        widths = [len(gene.mlp_channels) for gene in allocated]
        assert len(set(widths)) > 1  # spread over the layers, not uniform
        twin = [u for u in kinds["uniform"] if [g.q_heads for g in u] == [g.q_heads for g in allocated]]
        assert twin and sum(len(g.mlp_channels) for g in twin[0]) == sum(widths)  # same heads, same MLP total
    # a resumed search reuses the width costs kept with the importance: no second gradient pass, unless the widths
    # they price changed
    passes, gradients = [], evolution_method.output_gradient_covariance
    monkeypatch.setattr(evolution_method, "output_gradient_covariance",
                        lambda *args, **kwargs: passes.append(1) or gradients(*args, **kwargs))
    again = run_evolution(ctx, 0.7, options)
    assert again.spec.to_dict() == result.spec.to_dict() and not passes
    run_evolution(ctx, 0.7, options.model_copy(update={"mlp_multiple": 4}))
    assert passes == [1]


def test_greedy_selection_seeds_keep_the_channels_greedy_reform_aware_removal_ranks_first(tmp_path):
    ctx = _context(tmp_path, "greedy")
    run_evolution(ctx, 0.7, OPTIONS.model_copy(update={"mlp_selection": "greedy", "allocated_seeds": True}))
    # independently: the down projections' input moments and output gradients, then the greedy ranking
    downs = [ctx.adapter.mlp_linears(layer)[2] for layer in ctx.adapter.layers(ctx.model)]
    fishers = output_gradient_covariance(ctx.model, ctx.adapter, ctx.calibration, progress=False)
    greedy, grams_of = [], []

    def rank(index, grams, _scores):
        grams_of.append(grams["mlp_output"].mean())
        greedy.append(greedy_channel_scores(downs[index].weight.detach(), grams_of[-1], fishers[index]))
    phi = layer_importance(ctx.model, ctx.adapter, ctx.calibration, 1, False, on_layer=rank)
    # the allocated seeds' width costs price the greedy ranking's widths, not the importance's
    widths = SearchSpace(ctx.base, None, OPTIONS.mlp_multiple).widths()
    cached = torch.load(ctx.state.folder / "importance.pt", weights_only=True)["width_costs"]
    for i, (down, ranked) in enumerate(zip(downs, greedy)):
        order = torch.argsort(ranked, descending=True, stable=True)
        expected = removal_costs(down.weight.detach(), grams_of[i], fishers[i], order, widths)
        assert cached[i] == pytest.approx(expected, rel=1e-9)

    def seeds(state_dir):
        state = json.loads((state_dir / "evolution.json").read_text())
        return [genome_from_dict(s["genome"]) for s in state["seeds"] if s["kind"] == "uniform"]

    differs = False
    for seed in seeds(ctx.state.folder):
        for gene, ranked, scores in zip(seed, greedy, phi):
            width = len(gene.mlp_channels)
            assert gene.mlp_channels == top_units(ranked, width)
            differs |= gene.mlp_channels != top_units(scores.mlp_channels, width)
    assert differs  # the ranking is not the importance's
    # the importance kept for resuming is per selection: the paper's selection does not reuse the greedy ranking
    run_evolution(ctx, 0.7, OPTIONS)
    for seed in seeds(ctx.state.folder):
        assert all(gene.mlp_channels == top_units(s.mlp_channels, len(gene.mlp_channels)) for gene, s in zip(seed, phi))


def test_the_flap_seed_is_the_model_flap_keeps_and_reaches_the_final_choice(tmp_path, monkeypatch):
    from pipeline.compress.width.width_baselines import FlapOptions, run_flap

    ctx = _context(tmp_path, "flap")
    options = TRACKS.model_copy(update={"flap_seed": True})
    result = run_evolution(ctx, 0.7, options)
    assert [row["origin"] for row in result.metrics["final_choice"]].count("flap seed 1") == 1  # tracks share it
    state = json.loads((ctx.state.folder / "evolution.json").read_text())
    [seed] = [genome_from_dict(s["genome"]) for s in state["seeds"] if s["kind"] == "flap"]
    # FLAP itself (no bias, so the same parameter count), on the same calibration windows and MLP multiple
    flap = run_flap(_context(tmp_path, "baseline"), 0.7, FlapOptions(bias=False, mlp_multiple=OPTIONS.mlp_multiple))
    assert genome_spec(seed, ctx.base).to_dict()["layers"] == flap.spec.to_dict()["layers"]
    assert len({(len(gene.q_heads), len(gene.mlp_channels)) for gene in seed}) > 1  # not uniform over the layers
    # a resumed search reuses FLAP's scores kept with the importance: no second importance pass
    passes, importance = [], evolution_method.layer_importance
    monkeypatch.setattr(evolution_method, "layer_importance",
                        lambda *args, **kwargs: passes.append(1) or importance(*args, **kwargs))
    again = run_evolution(ctx, 0.7, options)
    assert again.spec.to_dict() == result.spec.to_dict() and not passes


def test_final_seqlen_reforms_on_every_calibration_window_and_scores_longer_held_out_windows(tmp_path):
    ctx = _context(tmp_path, "long")
    drawn = []

    def held_out(count, length):
        drawn.append((count, length))
        return torch.randint(3, 100, (count, length), generator=torch.Generator().manual_seed(2))

    ctx.held_out = held_out
    result = run_evolution(ctx, 0.7, TRACKS.model_copy(update={"final_seqlen": 48}))
    assert drawn == [(2, 48)] and result.metrics["final_windows"] == [2, 48]
    chosen = [row for row in result.metrics["final_choice"] if row["chosen"]][0]
    reformed = reformed_perplexity(ctx.model, result.spec, ctx.calibration, held_out(2, 48))  # fit on all windows
    assert reformed == pytest.approx(chosen["reformed_ppl"], rel=1e-5)
    from pipeline.errors import SculptError

    with pytest.raises(SculptError, match="only the search stage supplies"):
        run_evolution(_context(tmp_path, "alone"), 0.7, TRACKS.model_copy(update={"final_seqlen": 48}))


def test_a_compensated_search_ships_the_biased_model_it_scored_within_the_budget(tmp_path):
    from pipeline.compress.search.compensation import compensation_weights
    from pipeline.compress.width.width_baselines import FlapOptions, run_flap

    ctx = _context(tmp_path, "compensated")
    options = OPTIONS.model_copy(update={"compensate": True, "flap_seed": True})
    result = run_evolution(ctx, 0.7, options)
    spec = result.spec
    pruned = [(layer.attention == "keep" and len(layer.q_heads) < ctx.base.num_heads,
               layer.mlp == "keep" and len(layer.mlp_channels) < ctx.base.intermediate_size) for layer in spec.layers]
    assert [(layer.attention_out_bias, layer.mlp_out_bias) for layer in spec.layers] == pruned and any(map(any, pruned))
    assert decoder_parameters(spec) <= 0.7 * dense_decoder_parameters(ctx.base)  # the biases count
    # the shipped biases are the removed inputs' mean contribution, and the model they make is the one scored
    model = slice_model(ctx.model, spec)
    fitness = ctx.calibration[:options.fitness_windows, :options.fitness_seqlen]
    bare = calibration_perplexity(model, fitness)  # its biases still zero
    missing, unexpected = model.load_state_dict(result.weights, strict=False)
    assert not unexpected and len(result.weights) == sum(map(sum, pruned))
    assert calibration_perplexity(model, fitness) == pytest.approx(result.metrics["search_ppl"], rel=1e-4)
    assert bare != pytest.approx(result.metrics["search_ppl"], rel=1e-3)
    means = evolution_method._importance(ctx, "fresh", None, means=True).means
    expected = compensation_weights(ctx.model, ctx.adapter, spec, means)
    assert all(torch.allclose(result.weights[name], bias) for name, bias in expected.items())
    # the FLAP seed is FLAP with its bias, at the same parameter count
    state = json.loads((ctx.state.folder / "evolution.json").read_text())
    [seed] = [genome_from_dict(s["genome"]) for s in state["seeds"] if s["kind"] == "flap"]
    flap = run_flap(_context(tmp_path, "baseline"), 0.7, FlapOptions(mlp_multiple=OPTIONS.mlp_multiple))
    assert genome_spec(seed, ctx.base, out_bias=True).to_dict()["layers"] == flap.spec.to_dict()["layers"]
