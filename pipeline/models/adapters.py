"""Family adapters: the one place that knows where a family keeps its modules.

Algorithms ask the adapter for a layer's q/k/v/o, gate/up/down and norms, and for the tensor
names of the sliced model; they never name a module attribute. Keyed on `config.model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from ..errors import SculptError
from .spec import BaseDims


# The two output projections compression corrects, by role: the attention's output projection (its inputs are
# the heads' contexts) and the MLP's down projection (its inputs are the channels' activations).
ATTENTION_OUTPUT, MLP_OUTPUT = "attention_output", "mlp_output"
OUTPUT_PROJECTIONS = (ATTENTION_OUTPUT, MLP_OUTPUT)


class AttentionLinears(NamedTuple):
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


class MlpLinears(NamedTuple):
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


@dataclass(frozen=True)
class FamilyAdapter:
    """Module paths of a Llama-style decoder (pre-norm, gated MLP, separate q/k/v)."""

    model_type: str
    has_qk_norm: bool = False
    always_qkv_bias: bool = False

    # ---- dims ---------------------------------------------------------
    def dims(self, config) -> BaseDims:
        heads = config.num_attention_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        return BaseDims(
            model_type=self.model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=self.always_qkv_bias or attention_bias,
            o_bias=attention_bias and not self.always_qkv_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=self.has_qk_norm,
        )

    # ---- modules ------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def embed_tokens(self, model: nn.Module) -> nn.Embedding:
        return model.model.embed_tokens

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.model.norm

    def lm_head(self, model: nn.Module) -> nn.Linear:
        return model.lm_head

    def attention_norm(self, layer: nn.Module) -> nn.Module:
        return layer.input_layernorm

    def mlp_norm(self, layer: nn.Module) -> nn.Module:
        return layer.post_attention_layernorm

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def attention_linears(self, layer: nn.Module) -> AttentionLinears:
        attn = layer.self_attn
        return AttentionLinears(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)

    def qk_norms(self, layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        return (layer.self_attn.q_norm, layer.self_attn.k_norm) if self.has_qk_norm else None

    def mlp_linears(self, layer: nn.Module) -> MlpLinears:
        mlp = layer.mlp
        return MlpLinears(mlp.gate_proj, mlp.up_proj, mlp.down_proj)

    def output_projection(self, layer: nn.Module, role: str) -> nn.Linear:
        """The output projection of `role` (ATTENTION_OUTPUT or MLP_OUTPUT) of `layer`."""
        return self.attention_linears(layer).o if role == ATTENTION_OUTPUT else self.mlp_linears(layer).down

    # ---- tensor names (of the family model and of the sculpted model, which keeps the family's names) ----
    def layer_prefix(self, position: int) -> str:
        """The name prefix of the tensors of decoder layer `position`."""
        return f"model.layers.{position}"

    def output_projection_name(self, position: int, role: str) -> str:
        """The name of the output projection of `role` of layer `position` (append .weight / .bias)."""
        module = "self_attn.o_proj" if role == ATTENTION_OUTPUT else "mlp.down_proj"
        return f"{self.layer_prefix(position)}.{module}"


ADAPTERS: dict[str, FamilyAdapter] = {
    "llama": FamilyAdapter("llama"),
    "mistral": FamilyAdapter("mistral"),
    "qwen2": FamilyAdapter("qwen2", always_qkv_bias=True),
    "qwen3": FamilyAdapter("qwen3", has_qk_norm=True),
}
SUPPORTED_FAMILIES = tuple(ADAPTERS)


def adapter_for(config) -> FamilyAdapter:
    """The adapter for a dense source model's config; a clear error for anything else."""
    model_type = getattr(config, "model_type", None)
    if model_type == "sculpted":
        return ADAPTERS[config.base_model_type]
    if model_type not in ADAPTERS:
        raise SculptError(
            f"model type {model_type!r} is not supported; llm-sculpt supports {', '.join(SUPPORTED_FAMILIES)} "
            "(Llama-style decoders) — pick a model of one of these families"
        )
    return ADAPTERS[model_type]
