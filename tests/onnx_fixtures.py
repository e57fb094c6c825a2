"""Tiny heterogeneous sculpted models and their ONNX exports, shared by the export/lint/build tests.

Exporting takes seconds per model, so each export is made once per test session.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.models.adapters import adapter_for
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, LayerSpec
from tests.factories import tiny_model


def heterogeneous_spec(model) -> ArchSpec:
    """Per-layer KV heads (2, 1), a skipped attention, a skipped MLP, linear replacements, a removed layer (2)."""
    base = adapter_for(model.config).dims(model.config)
    layers = (
        LayerSpec(source=0, num_heads=4, num_kv_heads=2, q_heads=(0, 2, 4, 5), kv_heads=(0, 1),
                  intermediate_size=24, mlp_channels=tuple(range(0, 48, 2))),
        LayerSpec(source=1, attention="skip", intermediate_size=64, mlp_channels=tuple(range(64))),
        LayerSpec(source=3, num_heads=3, num_kv_heads=1, q_heads=(3, 4, 5), kv_heads=(1,), mlp="linear"),
        LayerSpec(source=4, attention="linear", mlp="skip"),
        LayerSpec(source=5, num_heads=2, num_kv_heads=2, q_heads=(0, 3), kv_heads=(0, 1),
                  intermediate_size=16, mlp_channels=tuple(range(16))),
    )
    return ArchSpec(base, layers).validate()


def heterogeneous_model(family: str = "llama", seed: int = 0):
    """A sculpted tiny model of 5 kept layers out of 6; its linear replacements get non-zero weights."""
    dense = tiny_model(family, seed, num_hidden_layers=6)
    model = slice_model(dense, heterogeneous_spec(dense))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.weight") and (".self_attn.proj" in name or ".mlp.proj" in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def sculpted_tiny():
    return heterogeneous_model()


@pytest.fixture(scope="session")
def exported_tiny(sculpted_tiny, tmp_path_factory):
    """The heterogeneous model exported in fp32, weights in an external data file (forced, to cover that path)."""
    from exporters.onnx_export import export_model

    return export_model(sculpted_tiny, tmp_path_factory.mktemp("onnx-fp32"), "fp32", external_data=True)


@pytest.fixture(scope="session")
def exported_tiny_fp16(sculpted_tiny, tmp_path_factory):
    from exporters.onnx_export import export_model

    return export_model(sculpted_tiny, tmp_path_factory.mktemp("onnx-fp16"), "fp16")


def torch_greedy(model, prompt, steps):
    """Greedy decoding through PyTorch's own KV cache (a sliding cache for sliding layers)."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        tokens = [prompt]
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(token)
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, dim=1)
