"""A decoder LM whose layers may differ: per-layer head counts and MLP widths,
sublayers skipped or replaced by one linear map, layers removed.

It reuses the source family's own attention, MLP, norm and rotary modules, so a
sculpted llama computes exactly what llama computes with the same weights.
Imports nothing from llm-sculpt (see configuration_sculpted.py).
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_sculpted import SculptedConfig

# model_type -> class-name prefix in transformers.models.<type>.modeling_<type>
_FAMILY_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def family_modules(model_type: str) -> SimpleNamespace:
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    prefix = _FAMILY_PREFIX[model_type]
    return SimpleNamespace(
        attention=getattr(module, f"{prefix}Attention"),
        mlp=getattr(module, f"{prefix}MLP"),
        norm=getattr(module, f"{prefix}RMSNorm"),
        rotary=getattr(module, f"{prefix}RotaryEmbedding"),
    )


class LinearSublayer(nn.Module):
    """A sublayer replaced by one bias-free hidden x hidden map (applied after the sublayer's pre-norm)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)


class SculptedDecoderLayer(nn.Module):
    def __init__(self, config: SculptedConfig, layer_idx: int) -> None:
        super().__init__()
        spec = config.sculpt_layers[layer_idx]
        family = family_modules(config.base_model_type)
        layer_config = config.layer_family_config(layer_idx)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.attention_mode = spec.get("attention", "keep")
        self.mlp_mode = spec.get("mlp", "keep")

        if self.attention_mode != "skip":
            self.input_layernorm = family.norm(hidden, eps=eps)
        if self.attention_mode == "keep":
            self.self_attn = family.attention(layer_config, config.attention_index(layer_idx))
            # The attention backend is a model-wide setting: read it from the model's config, not a per-layer copy.
            self.self_attn.config = config
            if spec.get("attention_out_bias") and self.self_attn.o_proj.bias is None:
                self.self_attn.o_proj = nn.Linear(self.self_attn.o_proj.in_features, hidden, bias=True)
        elif self.attention_mode == "linear":
            self.self_attn = LinearSublayer(hidden)

        if self.mlp_mode != "skip":
            self.post_attention_layernorm = family.norm(hidden, eps=eps)
        if self.mlp_mode == "keep":
            self.mlp = family.mlp(layer_config)
            if spec.get("mlp_out_bias") and self.mlp.down_proj.bias is None:
                self.mlp.down_proj = nn.Linear(self.mlp.down_proj.in_features, hidden, bias=True)
        elif self.mlp_mode == "linear":
            self.mlp = LinearSublayer(hidden)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.attention_mode == "keep":
            attn_out, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
                **kwargs,
            )
            hidden_states = hidden_states + attn_out
        elif self.attention_mode == "linear":
            hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states))
        if self.mlp_mode != "skip":
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class SculptedPreTrainedModel(PreTrainedModel):
    config_class = SculptedConfig
    config: SculptedConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["SculptedDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LinearSublayer):
            # A fresh linear replacement starts as a pass-through (adds nothing to the residual).
            nn.init.zeros_(module.proj.weight)


class SculptedModel(SculptedPreTrainedModel):
    def __init__(self, config: SculptedConfig) -> None:
        super().__init__(config)
        family = family_modules(config.base_model_type)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(SculptedDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = family.norm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = family.rotary(config=config.family_config())
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        mask_kwargs = dict(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        make_mask = create_sliding_window_causal_mask if self.config.sliding_window else create_causal_mask
        mask = make_mask(**mask_kwargs)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values if use_cache else None,
                position_ids=position_ids,
                **kwargs,
            )
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class SculptedForCausalLM(SculptedPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SculptedConfig) -> None:
        super().__init__(config)
        self.model = SculptedModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:, :]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
