"""Configuration of a sculpted model: a family config plus one entry per remaining layer.

This file and modeling_sculpted.py are copied into every saved model directory
(`auto_map`), so they import nothing from llm-sculpt: `trust_remote_code=True`
loads a sculpted model where llm-sculpt is not installed.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

SUPPORTED_BASE_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class SculptedConfig(PretrainedConfig):
    """`base_config` is the source family's config (a dict); `sculpt_layers` lists, per
    remaining layer, its source index, each sublayer's mode (`keep`, `skip`, `linear`),
    its head counts and its MLP width.

    Only layers that keep attention hold a KV cache; they are numbered 0..A-1 in the
    cache (`attention_index`), so cache entry i is always a real attention layer.
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
        if base_model_type not in SUPPORTED_BASE_TYPES:
            raise ValueError(f"base_model_type {base_model_type!r} is not one of {SUPPORTED_BASE_TYPES}")
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
        types = {self._source_attention_type(layer["source"]) for layer in kept}
        if len(types) > 1:
            raise ValueError("layers mixing sliding-window and full attention are not supported by sculpted models")
        derived["sliding_window"] = family_sliding_window(family) if types == {"sliding_attention"} else None
        super().__init__(**{k: v for k, v in kwargs.items() if k not in derived})
        # Set after the base init, which routes some of these keys (e.g. use_cache) elsewhere.
        for key, value in derived.items():
            setattr(self, key, value)

    @property
    def attention_layers(self) -> list[int]:
        """Positions of the layers that keep attention (and a KV cache), in order."""
        return [i for i, layer in enumerate(self.sculpt_layers) if layer.get("attention", "keep") == "keep"]

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
        if self.base_config.get("layer_types"):
            count = max(1, len(self.attention_layers))
            overrides["num_hidden_layers"] = count
            overrides["layer_types"] = [self._source_attention_type(self.sculpt_layers[i]["source"])
                                        for i in self.attention_layers] or ["full_attention"]
        # Built with the source's shape, then reshaped: family validators reject e.g. hidden % heads != 0,
        # which a per-layer head count need not satisfy (head_dim is explicit).
        family = self.family_config()
        for key, value in overrides.items():
            setattr(family, key, value)
        return family

    def _source_attention_type(self, source: int) -> str:
        family_types = self.base_config.get("layer_types")
        if family_types:
            return family_types[source]
        return "sliding_attention" if family_sliding_window(self.base_config) else "full_attention"


def family_sliding_window(config: Any) -> int | None:
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("use_sliding_window", True) is False:
        return None
    return get("sliding_window", None)


# Keys a family config carries that do not describe the family's architecture.
_NOT_FAMILY_KEYS = {
    "model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "name_or_path",
    "quantization_config", "dtype", "torch_dtype", "_attn_implementation_autoset", "per_layer_config",
}
_MIRRORED = (
    "vocab_size", "hidden_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "hidden_act", "rope_parameters", "use_cache",
)
