"""Seeded tiny random models of every supported family, for unit tests (seconds, no downloads)."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from pipeline.models.families import SUPPORTED_FAMILIES

FAMILIES = SUPPORTED_FAMILIES
SLIDING_WINDOW = 6  # tokens: tests feed longer sequences, so sliding layers really drop keys

# Per family: what a tiny config sets beyond the shared shape. Families with sliding-window layers get a short
# window (gemma: mixed sliding/full layers, as the real checkpoints; mistral, phi3: every layer slides).
_FAMILY_OVERRIDES = {
    "mistral": dict(sliding_window=SLIDING_WINDOW),
    "phi3": dict(sliding_window=SLIDING_WINDOW),
    "gemma2": dict(sliding_window=SLIDING_WINDOW),
    "gemma3_text": dict(sliding_window=SLIDING_WINDOW),
}
# The layer-kind pattern of mixed families, repeated over however many layers a test asks for.
_LAYER_PATTERNS = {"gemma2": ("sliding_attention", "full_attention"),
                   "gemma3_text": ("sliding_attention", "sliding_attention", "full_attention")}


def tiny_config(model_type: str = "llama", **overrides):
    """A tiny random config: hidden 48, 6 query heads in 2 GQA groups, head_dim 8, 4 layers."""
    from transformers import AutoConfig

    values = dict(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=model_type != "mistral",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    values.update(_FAMILY_OVERRIDES.get(model_type, {}))
    values.update(overrides)
    if model_type in _LAYER_PATTERNS and "layer_types" not in overrides:
        pattern = _LAYER_PATTERNS[model_type]
        values["layer_types"] = [pattern[i % len(pattern)] for i in range(values["num_hidden_layers"])]
    return AutoConfig.for_model(model_type, **values)


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A seeded tiny model whose norms and biases are random too (so slicing mistakes show)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
    return model


def char_tokenizer():
    """A character-level tokenizer of printable ASCII (101 ids, fits the tiny vocab of 128)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for char in sorted(set(string.printable)):
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
                                   pad_token="[UNK]")


def tiny_checkpoint(directory: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    """A tiny model saved with its tokenizer, as `--model DIR` takes it."""
    directory.mkdir(parents=True, exist_ok=True)
    tiny_model(model_type, seed, **overrides).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    return directory


def light_validate_recipe(directory: Path) -> Path:
    """A recipe with a short validate workload and the fast preset (no search), for tests about the CLI and
    methods rather than timings or the default pipeline."""
    recipe = Path(directory) / "light-validate.yaml"
    recipe.write_text("preset: fast\nvalidate:\n  prefill_lengths: [16]\n  decode_batch_sizes: [1]\n"
                      "  decode_new_tokens: 4\n  repeats: 1\n  memory: false\n")
    return recipe


def down_projection_problem(tokens: int = 400, channels: int = 12, hidden: int = 5, seed: int = 0):
    """A down projection's inputs (tokens x channels, correlated, so least squares can recover some removed
    channels from the kept ones), its weight (hidden x channels) and a gradient covariance (hidden x hidden)."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(tokens, channels, generator=g, dtype=torch.float64) @ torch.randn(
        channels, channels, generator=g, dtype=torch.float64)
    weight = torch.randn(hidden, channels, generator=g, dtype=torch.float64)
    root = torch.randn(hidden, hidden, generator=g, dtype=torch.float64)
    return inputs, weight, root @ root.T
