"""Width methods end to end on tiny models: legal specs at the ratio, weights that slice, reload and generate;
FLAP's bias restores the mean output; GOA's reconstruction lowers the output error."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.compress import METHODS
from pipeline.compress.registry import MethodContext
from pipeline.models.adapters import adapter_for
from pipeline.models.slicing import head_rows, slice_model
from pipeline.models.spec import decoder_ratio
from pipeline.stages.slice import apply_weights
from tests.factories import tiny_model

WIDTH_METHODS = ("magnitude", "wanda-sp", "flap", "goa")


def context(model, n=4, length=16):
    adapter = adapter_for(model.config)
    windows = torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(1))
    return MethodContext(model=model, tokenizer=None, adapter=adapter, base=adapter.dims(model.config),
                         calibration=windows, progress=False)


def run(name, model, ratio, ctx=None, **options):
    method = METHODS[name]
    return method.run(ctx or context(model), ratio, method.options(mlp_multiple=8, **options))


def sliced(model, result):
    small = slice_model(model, result.spec)
    apply_weights(small, result.weights, "method weights")
    return small


@pytest.mark.parametrize("ratio", [0.9, 0.5])
@pytest.mark.parametrize("name", WIDTH_METHODS)
def test_method_meets_the_ratio_and_its_model_reloads_and_generates(name, ratio, tmp_path):
    model = tiny_model("llama")
    result = run(name, model, ratio)
    spec = result.spec.validate()
    assert decoder_ratio(spec) == pytest.approx(ratio, abs=0.05)
    assert all(layer.intermediate_size % 8 == 0 for layer in spec.layers if layer.mlp == "keep")
    small = sliced(model, result)
    small.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, small(ids).logits, atol=0, rtol=0)
    generated = reloaded.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 17)


@pytest.mark.parametrize("name", WIDTH_METHODS)
def test_methods_handle_every_family(name, family_model):
    result = run(name, family_model, 0.6)
    small = sliced(family_model, result)
    with torch.no_grad():
        assert torch.isfinite(small(torch.tensor([[5, 6, 7, 8]])).logits).all()


def dense_inputs(model, adapter, windows, pick):
    """Inputs of `pick(layer)` (a linear) in every layer of the dense model, on the calibration windows."""
    found = {}
    handles = [pick(layer).register_forward_pre_hook(lambda _m, args, i=i: found.setdefault(i, []).append(args[0]))
               for i, layer in enumerate(adapter.layers(model))]
    with torch.no_grad():
        model(windows)
    for handle in handles:
        handle.remove()
    return {i: torch.cat(xs).reshape(-1, xs[0].shape[-1]) for i, xs in found.items()}


def test_flap_bias_compensation_restores_the_mean_output_of_each_pruned_projection():
    model = tiny_model("llama")
    ctx = context(model)
    result = run("flap", model, 0.6)
    small = sliced(model, result)
    checked = 0
    for kind, pick_dense, pick_small in (
        ("attention", lambda layer: ctx.adapter.attention_linears(layer).o, lambda layer: layer.self_attn.o_proj),
        ("mlp", lambda layer: ctx.adapter.mlp_linears(layer).down, lambda layer: layer.mlp.down_proj),
    ):
        inputs = dense_inputs(model, ctx.adapter, ctx.calibration, pick_dense)
        for pos, layer in enumerate(result.spec.layers):
            if kind == "attention" and not (layer.has_attention and layer.attention_out_bias):
                continue
            if kind == "mlp" and not (layer.mlp == "keep" and layer.mlp_out_bias):
                continue
            x = inputs[layer.source]
            kept = head_rows(layer.q_heads, 8) if kind == "attention" else torch.tensor(layer.mlp_channels)
            with torch.no_grad():
                target = pick_dense(ctx.adapter.layers(model)[layer.source])(x)
                with_bias = pick_small(small.model.layers[pos])(x[:, kept])
                without = x[:, kept] @ pick_small(small.model.layers[pos]).weight.T
            original, pruned, plain = target.mean(0), with_bias.mean(0), without.mean(0)
            scale = original.abs().max()
            assert (pruned - original).abs().max() < 1e-4 * scale
            assert (plain - original).abs().max() > 1e-2 * scale  # without the bias the mean moves
            assert (with_bias - target).pow(2).sum() < (without - target).pow(2).sum()  # and the error grows
            checked += 1
    assert checked > 0


def test_goa_reconstruction_lowers_the_output_error_of_plain_pruning():
    model = tiny_model("llama")
    ctx = context(model, n=8, length=32)
    refit = run("goa", model, 0.6, ctx, sequential=False)
    plain = run("goa", model, 0.6, ctx, sequential=False, reconstruct=False)
    assert refit.spec.layers == plain.spec.layers  # same selection: only the weights differ
    assert not plain.weights and refit.weights
    assert refit.metrics["output_error_reconstructed"] < refit.metrics["output_error_plain"]
    inputs = dense_inputs(model, ctx.adapter, ctx.calibration, lambda layer: ctx.adapter.mlp_linears(layer).down)
    small_refit, small_plain = sliced(model, refit), sliced(model, plain)
    for pos, layer in enumerate(refit.spec.layers):
        x = inputs[layer.source]
        kept = torch.tensor(layer.mlp_channels)
        with torch.no_grad():
            target = ctx.adapter.mlp_linears(ctx.adapter.layers(model)[layer.source]).down(x)
            errors = [(target - m.model.layers[pos].mlp.down_proj(x[:, kept])).pow(2).sum()
                      for m in (small_refit, small_plain)]
        assert errors[0] < errors[1]


def test_sequential_wanda_sp_scores_later_layers_on_the_pruned_model():
    model = tiny_model("llama")
    sequential = run("wanda-sp", model, 0.5)
    one_shot = run("wanda-sp", model, 0.5, sequential=False)
    assert sequential.spec.layers[0] == one_shot.spec.layers[0]  # the first layer sees the same inputs
    assert sequential.spec.layers[1:] != one_shot.spec.layers[1:]


def test_flap_uniform_structure_keeps_the_same_shape_in_every_layer():
    result = run("flap", tiny_model("llama"), 0.6, structure="UL-UM")
    assert len({(l.num_heads, l.num_kv_heads) for l in result.spec.layers}) == 1
    widths = {l.intermediate_size for l in result.spec.layers}  # one snapped width, a multiple more in some layers
    assert max(widths) - min(widths) <= 8
