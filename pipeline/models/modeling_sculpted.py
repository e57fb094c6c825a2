"""A decoder LM whose layers may differ: per-layer head counts and MLP widths,
sublayers skipped or replaced by one linear map, layers removed.

It reuses the source family's own attention, MLP, norm and rotary modules, laid out and
named as the family table (families.py) says: norms before and after each sublayer, fused
projections, embedding scale, one mask and RoPE table per attention kind (full or sliding
window), logit soft-cap. So a sculpted gemma3 computes exactly what gemma3 computes with the
same weights. Imports nothing from llm-sculpt but its sibling files (see configuration_sculpted.py).
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_sculpted import SculptedConfig
from .families import FULL, SLIDING, family_of

_MASKS = {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}


def family_modules(model_type: str) -> SimpleNamespace:
    """The family's transformers classes, found from its entry in the family table (families.py)."""
    family = family_of(model_type)
    module = importlib.import_module(f"transformers.models.{family.module}.modeling_{family.module}")
    prefix = family.prefix
    return SimpleNamespace(
        family=family,
        attention=getattr(module, f"{prefix}Attention"),
        mlp=getattr(module, f"{prefix}MLP"),
        norm=getattr(module, f"{prefix}RMSNorm"),
        rotary=getattr(module, f"{prefix}RotaryEmbedding"),
        pretrained=getattr(module, f"{prefix}PreTrainedModel"),
    )


class _LayerConfig:
    """A family attention module's config: the layer's own shape (its head counts, which e.g. phi3 reads at
    every forward), with the attention backend read from the model's config, a model-wide setting that
    `set_attn_implementation` changes."""

    def __init__(self, layer: Any, model: SculptedConfig) -> None:
        self.__dict__["_layer"], self.__dict__["_model"] = layer, model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_layer", "_model"):
            raise AttributeError(name)
        if name == "_attn_implementation":
            return self._model._attn_implementation
        return getattr(self._layer, name)


class LinearSublayer(nn.Module):
    """A sublayer replaced by one bias-free hidden x hidden map (applied after the sublayer's pre-norm)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)


class SculptedDecoderLayer(nn.Module):
    """One layer built from the family's modules, named as the family names them (families.py).

    A kept sublayer is pre-norm -> sublayer -> post-norm (where the family has one) -> residual add;
    a linear replacement is pre-norm -> one linear map -> residual add; a skipped one is nothing."""

    def __init__(self, config: SculptedConfig, layer_idx: int) -> None:
        super().__init__()
        spec = config.sculpt_layers[layer_idx]
        modules = family_modules(config.base_model_type)
        family = modules.family
        layer_config = config.layer_family_config(layer_idx)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.attention_mode = spec.get("attention", "keep")
        self.mlp_mode = spec.get("mlp", "keep")
        self.attention_kind = config.position_kinds[layer_idx]
        pre_attention, post_attention, pre_mlp, post_mlp = family.norms
        self._attention_names = (family.attention, pre_attention, post_attention)
        self._mlp_names = (family.mlp, pre_mlp, post_mlp)

        if self.attention_mode != "skip":
            setattr(self, pre_attention, modules.norm(hidden, eps=eps))
        if self.attention_mode == "keep":
            attention = modules.attention(layer_config, config.attention_index(layer_idx))
            attention.config = _LayerConfig(layer_config, config)
            if spec.get("attention_out_bias") and getattr(attention, family.o).bias is None:
                setattr(attention, family.o, nn.Linear(getattr(attention, family.o).in_features, hidden, bias=True))
            setattr(self, family.attention, attention)
            if post_attention:
                setattr(self, post_attention, modules.norm(hidden, eps=eps))
        elif self.attention_mode == "linear":
            setattr(self, family.attention, LinearSublayer(hidden))

        if self.mlp_mode != "skip":
            setattr(self, pre_mlp, modules.norm(hidden, eps=eps))
        if self.mlp_mode == "keep":
            mlp = modules.mlp(layer_config)
            if spec.get("mlp_out_bias") and getattr(mlp, family.down).bias is None:
                setattr(mlp, family.down, nn.Linear(getattr(mlp, family.down).in_features, hidden, bias=True))
            setattr(self, family.mlp, mlp)
            if post_mlp:
                setattr(self, post_mlp, modules.norm(hidden, eps=eps))
        elif self.mlp_mode == "linear":
            setattr(self, family.mlp, LinearSublayer(hidden))

    def _branch(self, names: tuple[str, str, str | None], mode: str, hidden_states: torch.Tensor,
                **attention_kwargs) -> torch.Tensor:
        sublayer, pre, post = (getattr(self, name, None) if name else None for name in names)
        if attention_kwargs and mode == "keep":
            out, _ = sublayer(hidden_states=pre(hidden_states), **attention_kwargs)
        else:
            out = sublayer(pre(hidden_states))
        return post(out) if post is not None and mode == "keep" else out

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.attention_mode != "skip":
            hidden_states = hidden_states + self._branch(
                self._attention_names, self.attention_mode, hidden_states, attention_mask=attention_mask,
                position_embeddings=position_embeddings, past_key_values=past_key_values, **kwargs)
        if self.mlp_mode != "skip":
            hidden_states = hidden_states + self._branch(self._mlp_names, self.mlp_mode, hidden_states)
        return hidden_states


class SculptedPreTrainedModel(PreTrainedModel):
    config_class = SculptedConfig
    config: SculptedConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["SculptedDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @property
    def _supports_sdpa(self) -> bool:
        """As the family says (gemma2's soft-capped attention has no sdpa path: it runs eager)."""
        return bool(family_modules(self.config.base_model_type).pretrained._supports_sdpa)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LinearSublayer):
            # A fresh linear replacement starts as a pass-through (adds nothing to the residual).
            nn.init.zeros_(module.proj.weight)
        elif "RotaryEmbedding" in type(module).__name__ and not hasattr(module, "original_inv_freq"):
            # RoPE tables per attention kind (gemma3) are buffers transformers' generic init does not know:
            # computed afresh from the module's config, as its own family's init does.
            fresh = type(module)(config=module.config)
            for name, buffer in fresh.named_buffers():
                init.copy_(getattr(module, name), buffer)


class SculptedModel(SculptedPreTrainedModel):
    def __init__(self, config: SculptedConfig) -> None:
        super().__init__(config)
        modules = family_modules(config.base_model_type)
        self.family = modules.family
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(SculptedDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = modules.norm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = modules.rotary(config=config.family_config())
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
            if self.family.embed_scale_sqrt_hidden:
                inputs_embeds = inputs_embeds * torch.tensor(self.config.hidden_size**0.5, dtype=inputs_embeds.dtype)
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
        # One mask and one RoPE table per attention kind (full / sliding window); each layer takes its kind's.
        kinds = sorted(set(self.config.layer_types))
        masks = attention_mask if isinstance(attention_mask, dict) else {
            kind: _MASKS[kind](**mask_kwargs) for kind in kinds}

        hidden_states = inputs_embeds
        if self.family.rope_per_kind:
            position_embeddings = {kind: self.rotary_emb(hidden_states, position_ids, kind) for kind in kinds}
        else:
            table = self.rotary_emb(hidden_states, position_ids=position_ids)
            position_embeddings = {kind: table for kind in kinds}
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            kind = layer.attention_kind if layer.attention_mode == "keep" else None
            hidden_states = layer(
                hidden_states,
                attention_mask=masks.get(kind),
                position_embeddings=position_embeddings.get(kind),
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
        cap_key = self.model.family.logit_softcap
        self.logit_softcap = getattr(config.family_config(), cap_key, None) if cap_key else None
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
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
