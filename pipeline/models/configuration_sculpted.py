"""Configuration of a sculpted model: a family config plus one entry per remaining layer.

This file, modeling_sculpted.py and the family table they import (families.py) are copied
into every saved model directory (`auto_map` and its relative imports), so they import
nothing else from llm-sculpt: `trust_remote_code=True` loads a sculpted model where
llm-sculpt is not installed.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .families import FULL, SLIDING, SUPPORTED_FAMILIES, attention_kinds, sliding_window


class SculptedConfig(PretrainedConfig):
    """`base_config` is the source family's config (a dict); `sculpt_layers` lists, per
    remaining layer, its source index, each sublayer's mode (`keep`, `skip`, `linear`),
    its head counts and its MLP width.

    Only layers that keep attention hold a KV cache; they are numbered 0..A-1 in the
    cache (`attention_index`), so cache entry i is always a real attention layer.
    `layer_types` follows the cache: the attention kind (full or sliding window) of each
    cache entry, each the kind of its source layer, so transformers' DynamicCache gives
    sliding layers a sliding cache and the masks are made per kind.
    """

    model_type = "sculpted"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        base_model_type: str = "llama",
        base_config: dict[str, Any] | None = None,
        sculpt_layers: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        if base_model_type not in SUPPORTED_FAMILIES:
            raise ValueError(f"base_model_type {base_model_type!r} is not one of {SUPPORTED_FAMILIES}")
        self.base_model_type = base_model_type
        self.base_config = {k: v for k, v in (base_config or {}).items() if k not in _NOT_FAMILY_KEYS}
        self.sculpt_layers = [dict(layer) for layer in (sculpt_layers or [])]
        family = self.family_config()
        derived: dict[str, Any] = {key: getattr(family, key) for key in _MIRRORED if hasattr(family, key)}
        derived["head_dim"] = getattr(family, "head_dim", None) or family.hidden_size // family.num_attention_heads
        derived["num_hidden_layers"] = len(self.sculpt_layers)
        kept = [layer for layer in self.sculpt_layers if layer.get("attention", "keep") == "keep"]
        # Widest layer: only for tools that size buffers from the top-level config.
        derived["num_attention_heads"] = max((layer["num_heads"] for layer in kept), default=family.num_attention_heads)
        derived["num_key_value_heads"] = max((layer["num_kv_heads"] for layer in kept), default=family.num_key_value_heads)
        derived["layer_types"] = [self._source_attention_type(layer["source"]) for layer in kept]
        derived["sliding_window"] = sliding_window(family) if SLIDING in derived["layer_types"] else None
        super().__init__(**{k: v for k, v in kwargs.items() if k not in derived})
        # Set after the base init, which routes some of these keys (e.g. use_cache) elsewhere.
        for key, value in derived.items():
            setattr(self, key, value)

    def validate(self) -> None:
        """transformers' config checks, each resolved on this class (so validate_layer_type is the one below)."""
        for validator in getattr(PretrainedConfig, "__class_validators__", ()):
            getattr(self, validator.__name__)()

    def validate_layer_type(self) -> None:
        """`layer_types` has one kind per KV-cache entry (layer that keeps attention), not one per layer."""
        kinds = getattr(self, "layer_types", None)
        if kinds is None or not hasattr(self, "sculpt_layers"):
            return
        if len(kinds) != len(self.attention_layers) or not set(kinds) <= {FULL, SLIDING}:
            raise ValueError(f"layer_types {kinds} must give {FULL!r} or {SLIDING!r} for each of the "
                             f"{len(self.attention_layers)} layers that keep attention")

    @property
    def attention_layers(self) -> list[int]:
        """Positions of the layers that keep attention (and a KV cache), in order."""
        return [i for i, layer in enumerate(self.sculpt_layers) if layer.get("attention", "keep") == "keep"]

    @property
    def position_kinds(self) -> list[str]:
        """The attention kind of the layer at each position (FULL where a layer keeps no attention)."""
        return [self._source_attention_type(layer["source"]) if layer.get("attention", "keep") == "keep" else FULL
                for layer in self.sculpt_layers]

    def attention_index(self, position: int) -> int:
        """The KV-cache index of the attention in layer `position`."""
        return self.attention_layers.index(position)

    def family_config(self, **overrides: Any) -> PretrainedConfig:
        """The source family's config class, built from `base_config` plus `overrides`."""
        data = dict(self.base_config)
        data.update(overrides)
        return AutoConfig.for_model(self.base_model_type, **data)

    def layer_family_config(self, position: int) -> PretrainedConfig:
        """A family config shaped like the layer at `position`: its head counts and MLP width,
        with the attention layers numbered as in the KV cache."""
        layer = self.sculpt_layers[position]
        overrides: dict[str, Any] = {"head_dim": self.head_dim}
        if layer.get("attention", "keep") == "keep":
            overrides["num_attention_heads"] = layer["num_heads"]
            overrides["num_key_value_heads"] = layer["num_kv_heads"]
        if layer.get("mlp", "keep") == "keep":
            overrides["intermediate_size"] = layer["intermediate_size"]
        if self.base_config.get("layer_types"):  # family attention modules read their kind by cache index
            overrides["num_hidden_layers"] = max(1, len(self.attention_layers))
            overrides["layer_types"] = list(self.layer_types) or [FULL]
        # Built with the source's shape, then reshaped: family validators reject e.g. hidden % heads != 0,
        # which a per-layer head count need not satisfy (head_dim is explicit).
        family = self.family_config()
        for key, value in overrides.items():
            setattr(family, key, value)
        return family

    def _source_attention_type(self, source: int) -> str:
        return attention_kinds(self.base_config)[source]


# Keys a family config carries that do not describe the family's architecture.
_NOT_FAMILY_KEYS = {
    "model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "name_or_path",
    "quantization_config", "dtype", "torch_dtype", "_attn_implementation_autoset", "per_layer_config",
}
_MIRRORED = (
    "vocab_size", "hidden_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "hidden_act", "rope_parameters", "use_cache",
)
