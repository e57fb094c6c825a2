"""Family adapters: what compression asks of a model, answered from the family table (families.py).

Algorithms ask the adapter for a layer's q/k/v/o, gate/up/down and norms, its attention kind,
the embeddings and the logits head, and for the tensor names of the sliced model; they never
name a module attribute. Where a family fuses projections (phi3's qkv_proj, gate_up_proj), q/k/v
and gate/up are `Rows`: views of the fused weight, one part each. Keyed on `config.model_type`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import SculptError
from .families import (
    FAMILIES,
    FULL,
    SLIDING,
    TEXT_TOWERS,
    Family,
    attention_kinds,
    unsupported_message,
)
from .spec import BaseDims

# The two output projections compression corrects, by role: the attention's output projection (its inputs are
# the heads' contexts) and the MLP's down projection (its inputs are the channels' activations).
ATTENTION_OUTPUT, MLP_OUTPUT = "attention_output", "mlp_output"
OUTPUT_PROJECTIONS = (ATTENTION_OUTPUT, MLP_OUTPUT)


class Rows:
    """Output rows [start, stop) of a linear layer: one part of a fused projection, read as a linear of its own.

    `weight` and `bias` are views of the fused tensors (so edits write through); `module` is the fused layer,
    whose input is the part's input."""

    def __init__(self, module: nn.Linear, start: int, stop: int) -> None:
        self.module, self.start, self.stop = module, start, stop

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight[self.start:self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.module.bias is None else self.module.bias[self.start:self.stop]

    @property
    def in_features(self) -> int:
        return self.module.in_features

    @property
    def out_features(self) -> int:
        return self.stop - self.start


class AttentionLinears(NamedTuple):
    q: nn.Linear | Rows
    k: nn.Linear | Rows
    v: nn.Linear | Rows
    o: nn.Linear


class MlpLinears(NamedTuple):
    gate: nn.Linear | Rows
    up: nn.Linear | Rows
    down: nn.Linear


class SoftCappedHead(nn.Module):
    """The LM head followed by the family's logit soft-cap, cap * tanh(logits / cap) (gemma2)."""

    def __init__(self, head: nn.Linear, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, cap

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


def fused_parts(fused: nn.Linear, widths: tuple[int, ...]) -> tuple[Rows, ...]:
    """The parts of a fused projection whose output rows stack parts of `widths` rows, in order."""
    if sum(widths) != fused.out_features:
        raise ValueError(f"a fused projection of {fused.out_features} rows cannot hold parts of {widths} rows")
    bounds = [0]
    for width in widths:
        bounds.append(bounds[-1] + width)
    return tuple(Rows(fused, a, b) for a, b in itertools.pairwise(bounds))


@dataclass(frozen=True)
class FamilyAdapter:
    """A family's modules, found through its `Family` layout."""

    family: Family

    @property
    def model_type(self) -> str:
        return self.family.model_type

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
            qkv_bias=self.family.qkv_bias_always or attention_bias,
            o_bias=attention_bias and not self.family.qkv_bias_always,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=self.family.qk_norms is not None,
            post_norms=self.family.post_norms,
        )

    # ---- the model ----------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def embed_tokens(self, model: nn.Module) -> nn.Embedding:
        return model.model.embed_tokens

    def embed(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The residual stream entering the first layer: the embeddings, scaled where the family scales them."""
        weight = self.embed_tokens(model).weight
        hidden = F.embedding(ids.to(weight.device), weight)
        if self.family.embed_scale_sqrt_hidden:
            hidden = hidden * torch.tensor(weight.shape[1] ** 0.5, dtype=hidden.dtype)
        return hidden

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.model.norm

    def lm_head(self, model: nn.Module) -> nn.Module:
        """The logits head: the LM head, followed by the family's soft-cap where the config sets one."""
        cap = getattr(_family_config(model.config), self.family.logit_softcap, None) if self.family.logit_softcap else None
        return SoftCappedHead(model.lm_head, cap) if cap else model.lm_head

    def layer_kinds(self, model: nn.Module) -> list[str]:
        """The attention kind (families.FULL or SLIDING) of each decoder layer of `model`, dense or sculpted."""
        if getattr(model.config, "model_type", None) == "sculpted":
            return [getattr(layer, "attention_kind", FULL) for layer in self.layers(model)]
        return attention_kinds(model.config)

    def position_embeddings(self, model: nn.Module, hidden: torch.Tensor,
                            positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """RoPE tables by attention kind (the same table for both kinds unless the family's bases differ)."""
        rotary = model.model.rotary_emb
        if self.family.rope_per_kind:
            return {kind: self.rotary_table(rotary, hidden, positions, kind) for kind in (FULL, SLIDING)
                    if hasattr(rotary, f"{kind}_inv_freq")}
        table = self.rotary_table(rotary, hidden, positions)
        return {FULL: table, SLIDING: table}

    def rotary_table(self, rotary: nn.Module, hidden: torch.Tensor, positions: torch.Tensor,
                     kind: str = FULL) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) table of the family's rotary module `rotary` at `positions` for a layer of attention
        `kind` (families.FULL or SLIDING): the kind's own RoPE base where the family has one per kind."""
        if kind not in (FULL, SLIDING):
            raise ValueError(f"attention kind {kind!r} is not {FULL!r} or {SLIDING!r}")
        if self.family.rope_per_kind:
            return rotary(hidden, positions, kind)
        return rotary(hidden, position_ids=positions)

    # ---- a layer's modules --------------------------------------------
    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.family.attention)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.family.mlp)

    def attention_norm(self, layer: nn.Module) -> nn.Module:
        """The attention's pre-norm."""
        return getattr(layer, self.family.attention_pre_norm)

    def mlp_norm(self, layer: nn.Module) -> nn.Module:
        """The MLP's pre-norm."""
        return getattr(layer, self.family.mlp_pre_norm)

    def post_norm(self, layer: nn.Module, role: str) -> nn.Module | None:
        """The norm of `role`'s sublayer output before the residual add, where the family (and layer) has one."""
        name = self.family.attention_post_norm if role == ATTENTION_OUTPUT else self.family.mlp_post_norm
        return getattr(layer, name, None) if name else None

    def attention_linears(self, layer: nn.Module) -> AttentionLinears:
        attn = self.attention(layer)
        o = getattr(attn, self.family.o)
        if self.family.fused_qkv:
            heads_width = o.in_features  # query heads x head_dim
            kv_width = (getattr(attn, self.family.qkv[0]).out_features - heads_width) // 2
            q, k, v = fused_parts(getattr(attn, self.family.qkv[0]), (heads_width, kv_width, kv_width))
        else:
            q, k, v = (getattr(attn, name) for name in self.family.qkv)
        return AttentionLinears(q, k, v, o)

    def qk_norms(self, layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        names = self.family.qk_norms
        return None if names is None else tuple(getattr(self.attention(layer), name) for name in names)

    def mlp_linears(self, layer: nn.Module) -> MlpLinears:
        mlp = self.mlp(layer)
        down = getattr(mlp, self.family.down)
        if self.family.fused_gate_up:
            gate, up = fused_parts(getattr(mlp, self.family.gate_up[0]), (down.in_features, down.in_features))
        else:
            gate, up = (getattr(mlp, name) for name in self.family.gate_up)
        return MlpLinears(gate, up, down)

    def attention_input(self, layer: nn.Module) -> nn.Linear:
        """A module whose input is the attention's normalised input (q_proj, or the fused qkv_proj)."""
        return getattr(self.attention(layer), self.family.qkv[0])

    def mlp_input(self, layer: nn.Module) -> nn.Linear:
        """A module whose input is the MLP's normalised input (gate_proj, or the fused gate_up_proj)."""
        return getattr(self.mlp(layer), self.family.gate_up[0])

    def output_projection(self, layer: nn.Module, role: str) -> nn.Linear:
        """The output projection of `role` (ATTENTION_OUTPUT or MLP_OUTPUT) of `layer`."""
        return self.attention_linears(layer).o if role == ATTENTION_OUTPUT else self.mlp_linears(layer).down

    # ---- tensor names (of the family model and of the sculpted model, which keeps the family's names) ----
    def layer_prefix(self, position: int) -> str:
        """The name prefix of the tensors of decoder layer `position`."""
        return f"model.layers.{position}"

    def output_projection_name(self, position: int, role: str) -> str:
        """The name of the output projection of `role` of layer `position` (append .weight / .bias)."""
        if role == ATTENTION_OUTPUT:
            return f"{self.layer_prefix(position)}.{self.family.attention}.{self.family.o}"
        return f"{self.layer_prefix(position)}.{self.family.mlp}.{self.family.down}"


def _family_config(config):
    """A sculpted model's family config (where soft-cap and other family keys live); a family config as is."""
    return config.family_config() if getattr(config, "model_type", None) == "sculpted" else config


ADAPTERS: dict[str, FamilyAdapter] = {name: FamilyAdapter(family) for name, family in FAMILIES.items()}


def adapter_for(config) -> FamilyAdapter:
    """The adapter for a dense source model's config (or a sculpted one's); a clear error for anything else."""
    model_type = getattr(config, "model_type", None)
    if model_type == "sculpted":
        return ADAPTERS[config.base_model_type]
    if model_type in TEXT_TOWERS:
        tower = TEXT_TOWERS[model_type]
        raise SculptError(f"model type {model_type!r} is multimodal: llm-sculpt prunes its text tower, a "
                          f"{tower.family} model; take it first with pipeline.models.text_tower.text_tower_checkpoint")
    if model_type not in ADAPTERS:
        raise SculptError(unsupported_message(model_type))
    return ADAPTERS[model_type]


def gguf_config_fixes(path, config):
    """`config`, as transformers' GGUF loader made it from the GGUF file at `path`, with the family's metadata
    that loader does not read (`Family.gguf_keys`: e.g. qwen3's head_dim, phi3's sliding window, gemma3's RoPE
    scaling) set from the file. Keys the file does not hold keep the loader's value; returns `config`."""
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None or not family.gguf_keys:
        return config
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    architecture = fields["general.architecture"].contents()
    for key, target in family.gguf_keys:
        field = fields.get(f"{architecture}.{key}")
        value = None if field is None else field.contents()
        if value is None or value == "none":  # llama.cpp writes rope.scaling.type "none" for no scaling
            continue
        *path_to, last = target.split(".")
        node = config
        for name in path_to:
            node = node[name] if isinstance(node, dict) else getattr(node, name)
        if isinstance(node, dict):
            node[last] = value
        else:
            setattr(node, last, value)
    return config
