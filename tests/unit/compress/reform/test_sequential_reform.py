"""Reforming a sliced tiny model layer by layer: every corrected projection fits better, and so does the model."""

from dataclasses import replace

import pytest
import torch

from pipeline.compress.reform.sequential_reform import ReformSettings, pruned_inputs, reform_sculpted, with_output_biases
from pipeline.compress.calibration.layer_stream import GramAccumulator
from pipeline.models.adapters import ATTENTION_OUTPUT, MLP_OUTPUT, adapter_for
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec
from tests.factories import tiny_model

MLP_KEPT = tuple(range(0, 64, 2)) + (1, 3, 5, 7, 9)  # 37 of 64 channels


def pruned_spec(model) -> ArchSpec:
    """Every layer loses one query head per GQA group and 27 MLP channels; layer 2 drops its MLP."""
    dense = ArchSpec.dense(adapter_for(model.config).dims(model.config))
    layers = [replace(layer, num_heads=4, q_heads=(0, 1, 3, 4), intermediate_size=len(MLP_KEPT),
                      mlp_channels=MLP_KEPT) for layer in dense.layers]
    layers[2] = replace(layers[2], mlp="skip", intermediate_size=0, mlp_channels=None)
    return replace(dense, layers=tuple(layers)).validate()


def windows(n, seed, length=24):
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def logit_error(model, dense, ids) -> float:
    with torch.no_grad():
        return float(((model(ids).logits - dense(ids).logits) ** 2).mean())


@pytest.mark.parametrize("method", ["admm", "least-squares", "bias"])
def test_reform_lowers_every_projection_error_and_the_model_error_on_unseen_text(method):
    dense = tiny_model("llama", seed=1)
    spec = pruned_spec(dense)
    spec = with_output_biases(spec) if method == "bias" else spec
    sculpted = slice_model(dense, spec)
    unseen = windows(4, seed=9)
    before = logit_error(sculpted, dense, unseen)
    outcome = reform_sculpted(sculpted, dense, spec, windows(16, seed=0), ReformSettings(method), progress=False)
    assert [(r.position, r.module) for r in outcome.reports] == [
        (0, ATTENTION_OUTPUT), (0, MLP_OUTPUT), (1, ATTENTION_OUTPUT), (1, MLP_OUTPUT), (2, ATTENTION_OUTPUT),
        (3, ATTENTION_OUTPUT), (3, MLP_OUTPUT)]
    for report in outcome.reports:
        assert report.error_after < report.error_before, report
    if method != "bias":  # a random model's channel means are ~0: its bias is mostly sampling noise off-sample
        assert logit_error(sculpted, dense, unseen) < before
    assert outcome.tokens == 16 * 24 and outcome.seconds["total"] > 0


def test_reformed_tensors_rebuild_the_reformed_model_from_a_fresh_slice():
    dense = tiny_model("llama", seed=2)
    spec = with_output_biases(pruned_spec(dense))
    sculpted = slice_model(dense, spec)
    outcome = reform_sculpted(sculpted, dense, spec, windows(8, seed=0), ReformSettings("bias"), progress=False)
    assert set(outcome.tensors) == {f"model.layers.{i}.{m}.{p}" for i, m in [
        (0, "self_attn.o_proj"), (0, "mlp.down_proj"), (1, "self_attn.o_proj"), (1, "mlp.down_proj"),
        (2, "self_attn.o_proj"), (3, "self_attn.o_proj"), (3, "mlp.down_proj")] for p in ("weight", "bias")}
    fresh = slice_model(dense, spec)
    fresh.load_state_dict(outcome.tensors, strict=False)
    ids = windows(2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, sculpted(ids).logits)


def test_sequential_calibration_fits_later_layers_to_the_reformed_stream():
    dense = tiny_model("llama", seed=3)
    spec = pruned_spec(dense)
    calibration = windows(12, seed=0)
    runs = {}
    for sequential in (True, False):
        model = slice_model(dense, spec)
        runs[sequential] = reform_sculpted(model, dense, spec, calibration,
                                           ReformSettings("least-squares", sequential=sequential), progress=False)
    first, later = [[(a.error_before, b.error_before) for a, b in zip(runs[True].reports, runs[False].reports)][i]
                    for i in (0, -1)]
    assert first[0] == pytest.approx(first[1], rel=1e-9)  # layer 0's attention sees the embeddings either way
    assert later[0] != pytest.approx(later[1], rel=1e-6)  # the last MLP sees the pruned, reformed stream


def test_pruned_inputs_names_only_the_projections_that_lost_inputs():
    dense = tiny_model("llama", seed=0)
    full = ArchSpec.dense(adapter_for(dense.config).dims(dense.config))
    assert all(pruned_inputs(layer, full) == {} for layer in full.layers)
    spec = pruned_spec(dense)
    assert set(pruned_inputs(spec.layers[2], spec)) == {ATTENTION_OUTPUT}
    assert pruned_inputs(spec.layers[0], spec)[ATTENTION_OUTPUT].tolist() == [*range(0, 16), *range(24, 40)]


@pytest.mark.parametrize("width", [7, 512, 1100])  # below, at and across the block size
def test_gram_accumulator_sums_the_exact_symmetric_gram_over_windows(width):
    windows = [torch.randn(2, 33, width) for _ in range(3)]
    exact = torch.cat([w.reshape(-1, width) for w in windows]).double()
    full, diagonal = GramAccumulator(), GramAccumulator(full=False)
    for window in windows:
        full.add(window)
        diagonal.add(window)
    assert torch.equal(full.gram, full.gram.T) and full.tokens == 198
    torch.testing.assert_close(full.mean(), exact.T @ exact / 198, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.input_mean(), exact.mean(dim=0))
    torch.testing.assert_close(diagonal.square_mean(), full.mean().diagonal(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["admm", "least-squares"])
def test_reform_refits_a_methods_compensation_bias_instead_of_adding_to_it(method):
    """FLAP leaves a compensation bias on each pruned projection; reform replaces it with one fitted jointly
    with the kept columns. Reforming the same slice from a wildly wrong bias gives the same model."""
    dense = tiny_model("llama", seed=3)
    spec = with_output_biases(pruned_spec(dense))
    results = []
    for start in (0.0, 5.0):
        sculpted = slice_model(dense, spec)
        with torch.no_grad():
            for name, parameter in sculpted.named_parameters():
                if name.endswith(("o_proj.bias", "down_proj.bias")):
                    parameter.fill_(start)
        outcome = reform_sculpted(sculpted, dense, spec, windows(16, seed=0), ReformSettings(method), progress=False)
        assert all(report.error_after < report.error_before for report in outcome.reports)
        results.append(sculpted(windows(2, seed=5)).logits.detach())
    torch.testing.assert_close(results[0], results[1])
