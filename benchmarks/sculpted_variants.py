"""SmolLM2 (real or random weights) and sculpted variants of it, for the export/latency benchmarks.

A variant at ratio r is what `sculpt run --ratio r` makes: the uniform method (calibrated
split) on a few calibration windows, then physical slicing. For latency only the shapes
matter; with random weights the calibration windows are random token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


from pipeline.compress.registry import MethodContext
from pipeline.compress.width.uniform import UniformOptions, run_uniform
from pipeline.models.adapters import adapter_for
from pipeline.models.slicing import slice_model
from pipeline.models.spec import ArchSpec, decoder_ratio

# SmolLM2-135M's shape (what load_model() gives), for --random-weights where the real file cannot travel.
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=1,
                     eos_token_id=2)


def source_model(random_weights: bool, layers: int | None = None, device: str = "cpu", seed: int = 0,
                 model_ref: str | None = None):
    """(dense model, tokenizer or None): `model_ref` (default SmolLM2-135M), or SmolLM2's shape with random weights."""
    if random_weights:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        shape = dict(SMOLLM2_SHAPE, num_hidden_layers=layers or SMOLLM2_SHAPE["num_hidden_layers"])
        model, tokenizer = LlamaForCausalLM(LlamaConfig(**shape)).eval(), None
    else:
        from pipeline.models.loading import load_model

        loaded = load_model(model_ref)
        model, tokenizer = loaded.model, loaded.tokenizer
        if layers:
            model = first_layers(model, layers)
    return model.to(device), tokenizer


def first_layers(model, count: int):
    """The dense model cut, in place, to its first `count` layers (for quick runs of the benchmarks)."""
    del adapter_for(model.config).layers(model)[count:]
    model.config.num_hidden_layers = count
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:count]
    return model


def calibration(model, tokenizer, samples: int, seq_len: int, corpus: str = "pydoc", data_dir: str | None = None,
                seed: int = 0) -> torch.Tensor:
    if tokenizer is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.config.vocab_size, (samples, seq_len), generator=generator)
    from pipeline.data import calibration_windows, load_corpus

    return calibration_windows(tokenizer, load_corpus(corpus, "calibration", data_dir), samples, seq_len, seed)


@dataclass
class Variant:
    model: torch.nn.Module  # a SculptedForCausalLM (the dense one is the identity slice), eval mode
    decoder_ratio: float  # fraction of the source's decoder parameters kept


def variants(model, tokenizer, ratios: list[float], windows: torch.Tensor) -> dict[str, Variant]:
    """{"dense": the source as an identity slice, "0.8": the uniform method at 0.8, ...}."""
    adapter = adapter_for(model.config)
    base = adapter.dims(model.config)
    out = {"dense": Variant(slice_model(model, ArchSpec.dense(base)), 1.0)}
    for ratio in ratios:
        ctx = MethodContext(model=model, tokenizer=tokenizer, adapter=adapter, base=base,
                            calibration=windows.to(next(model.parameters()).device), progress=False)
        spec = run_uniform(ctx, ratio, UniformOptions()).spec
        out[f"{ratio:g}"] = Variant(slice_model(model, spec), decoder_ratio(spec))
    return out


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
