"""The sculpted model: slicing equals masking, it saves, reloads (two ways) and generates."""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

import pipeline  # noqa: F401  (registers the Auto classes)
from pipeline.models.adapters import adapter_for
from pipeline.models.modeling_sculpted import SculptedForCausalLM
from pipeline.models.slicing import mask_weights, slice_model
from pipeline.models.spec import ArchSpec, LayerSpec, total_parameters
from pipeline.errors import SculptError
from tests.factories import FAMILIES, tiny_config, tiny_model


def heterogeneous_spec(model) -> ArchSpec:
    """Different heads and KV groups per layer, a skipped attention, a skipped MLP, a removed layer."""
    base = adapter_for(model.config).dims(model.config)
    layers = (
        LayerSpec(source=0, num_heads=4, num_kv_heads=2, q_heads=(0, 2, 4, 5), kv_heads=(0, 1),
                  intermediate_size=24, mlp_channels=tuple(range(0, 48, 2))),
        LayerSpec(source=1, attention="skip", intermediate_size=64, mlp_channels=tuple(range(64))),
        LayerSpec(source=3, num_heads=3, num_kv_heads=1, q_heads=(3, 4, 5), kv_heads=(1,), mlp="skip"),
    )
    return ArchSpec(base, layers).validate()


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, use_cache=False, **kwargs).logits


IDS = torch.randint(3, 128, (2, 13), generator=torch.Generator().manual_seed(0))  # past the tiny sliding windows


def test_sliced_model_computes_what_the_masked_dense_model_computes(family_model):
    spec = heterogeneous_spec(family_model)
    sliced = slice_model(family_model, spec)
    masked = mask_weights(copy.deepcopy(family_model), spec)
    torch.testing.assert_close(logits(sliced, IDS), logits(masked, IDS), atol=1e-5, rtol=0)


def test_sliced_model_is_physically_smaller_as_the_spec_predicts(family_model):
    spec = heterogeneous_spec(family_model)
    sliced = slice_model(family_model, spec)
    assert sum(p.numel() for p in sliced.parameters()) == total_parameters(spec)
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in family_model.parameters())
    adapter = adapter_for(family_model.config)
    assert adapter.attention_linears(sliced.model.layers[0]).k.out_features == 2 * 8
    assert not hasattr(sliced.model.layers[1], adapter.family.attention)


def test_dense_spec_reproduces_the_source(family_model):
    base = adapter_for(family_model.config).dims(family_model.config)
    sliced = slice_model(family_model, ArchSpec.dense(base))
    torch.testing.assert_close(logits(sliced, IDS), logits(family_model, IDS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_kv_cache_matches_greedy_without_cache(family):
    model = slice_model(tiny_model(family), heterogeneous_spec(tiny_model(family)))
    prompt = IDS[:1, :5]
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    sequence = prompt
    for _ in range(10):
        sequence = torch.cat([sequence, logits(model, sequence)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, sequence)


def test_linear_replacement_starts_as_a_pass_through():
    model = tiny_model("llama")
    base = adapter_for(model.config).dims(model.config)
    dense = ArchSpec.dense(base)
    skipped = ArchSpec(base, (dense.layers[0], LayerSpec(source=1, attention="skip", mlp="skip")) + dense.layers[2:])
    linear = ArchSpec(base, (dense.layers[0], LayerSpec(source=1, attention="linear", mlp="linear")) + dense.layers[2:])
    linear_model = slice_model(model, linear)
    torch.testing.assert_close(logits(linear_model, IDS), logits(slice_model(model, skipped), IDS), atol=1e-6, rtol=0)
    with torch.no_grad():  # a fitted replacement does change the output
        linear_model.model.layers[1].mlp.proj.weight.normal_(0, 0.1)
    assert not torch.allclose(logits(linear_model, IDS), logits(slice_model(model, skipped), IDS))


def test_output_bias_is_added_when_the_spec_asks_for_it():
    model = tiny_model("llama")
    base = adapter_for(model.config).dims(model.config)
    dense = ArchSpec.dense(base)
    from dataclasses import replace
    spec = ArchSpec(base, (replace(dense.layers[0], attention_out_bias=True, mlp_out_bias=True),) + dense.layers[1:])
    sliced = slice_model(model, spec)
    assert sliced.model.layers[0].self_attn.o_proj.bias is not None
    assert sum(p.numel() for p in sliced.parameters()) == total_parameters(spec)
    torch.testing.assert_close(logits(sliced, IDS), logits(model, IDS), atol=1e-5, rtol=0)


def test_slicing_needs_keep_indices():
    model = tiny_model("llama")
    spec = heterogeneous_spec(model).without_indices()
    with pytest.raises(SculptError, match="keep-indices"):
        slice_model(model, spec)


def test_unsupported_family_gets_a_clear_error():
    config = tiny_config("llama")
    config.model_type = "gpt2"
    with pytest.raises(SculptError, match="llama, mistral, qwen2, qwen3"):
        adapter_for(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_reloads_with_auto_classes(family, tmp_path):
    model = tiny_model(family)
    sliced = slice_model(model, heterogeneous_spec(model))
    sliced.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sculpted"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_sculpted.SculptedForCausalLM"
    for name in ("modeling_sculpted.py", "configuration_sculpted.py", "families.py"):  # the family table travels too
        assert (tmp_path / name).is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, SculptedForCausalLM)
    torch.testing.assert_close(logits(reloaded, IDS), logits(sliced, IDS), atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_trust_remote_code_loads_without_llm_sculpt(family, tmp_path):
    """A fresh interpreter where `import pipeline` fails still loads the model from its own files."""
    model = tiny_model(family)
    sliced = slice_model(model, heterogeneous_spec(model))
    sliced.save_pretrained(tmp_path / "model")
    expected = logits(sliced, IDS)
    torch.save(IDS, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys
        for name in ("pipeline", "exporters", "validators"):
            sys.modules[name] = None  # make `import pipeline` fail
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
        assert "pipeline" not in type(model).__module__
        with torch.no_grad():
            out = model(torch.load({str(tmp_path / 'ids.pt')!r}), use_cache=False).logits
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True,
                   env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
                        "PATH": "/usr/bin:/bin"})
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=0, rtol=0)


def test_left_padded_batch_generation_matches_each_prompt_alone():
    model = slice_model(tiny_model("llama"), heterogeneous_spec(tiny_model("llama")))
    prompts = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    options = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    batch = model.generate(prompts, attention_mask=mask, **options)
    alone = model.generate(prompts[1:, 2:], **options)
    for batched, single in zip(batch.scores, alone.scores):
        torch.testing.assert_close(batched[1], single[0], atol=1e-5, rtol=0)
