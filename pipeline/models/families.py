"""The table of model families: what a family's decoder layer looks like, as data.

This is the one place that lists the supported families and knows their layouts. The
adapters (adapters.py: what compression reads), the sculpted model (modeling_sculpted.py),
its config (configuration_sculpted.py), slicing and the parameter counts (spec.py, through
BaseDims) all read a `Family` from `FAMILIES` instead of assuming the Llama layout.

Like configuration_sculpted.py, this file is copied into every sculpted checkpoint and
imports nothing from llm-sculpt (nor torch): `trust_remote_code=True` loads it from there.

Adding a family: one `Family(...)` entry below (its transformers module and class prefix,
where its modules and norms sit, what it fuses), then a row in the README's support table
and the family in tests/factories.py's FAMILIES. docs/architecture.md walks through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FULL, SLIDING = "full_attention", "sliding_attention"  # attention kinds, named as transformers' `layer_types`


@dataclass(frozen=True)
class Family:
    """The layout of one family's decoder, keyed by `config.model_type`.

    Module names are attributes of a decoder layer (`norms`, `attention`, `mlp`) or of its
    attention / MLP module (`qkv`, `o`, `gate_up`, `down`, `qk_norms`). A projection tuple of
    one name is fused: its output rows are the parts' rows stacked in the order of the
    unfused tuple (q | k | v, gate | up), each part as wide as the unfused projection would be.
    """

    model_type: str
    module: str  # transformers.models.<module>.modeling_<module>
    prefix: str  # class-name prefix: <prefix>Attention, <prefix>MLP, <prefix>RMSNorm, <prefix>RotaryEmbedding
    examples: str  # checkpoints of the family, for the README's support table
    # the norms of a layer: (pre-attention, post-attention, pre-MLP, post-MLP); None where the family has none.
    # A pre-norm normalises the sublayer's input, a post-norm its output before the residual add.
    norms: tuple[str | None, str | None, str | None, str | None] = (
        "input_layernorm", None, "post_attention_layernorm", None)
    attention: str = "self_attn"
    mlp: str = "mlp"
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # ("qkv_proj",): fused q | k | v rows
    o: str = "o_proj"
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")  # ("gate_up_proj",): fused gate | up rows
    down: str = "down_proj"
    qk_norms: tuple[str, str] | None = None  # per-head RMSNorms on queries and keys, under `attention`
    qkv_bias_always: bool = False  # q/k/v carry a bias whatever `attention_bias` says (qwen2), o_proj none
    embed_scale_sqrt_hidden: bool = False  # embeddings are multiplied by sqrt(hidden_size) (gemma)
    rope_per_kind: bool = False  # RoPE parameters differ by attention kind: the rotary module takes the kind
    logit_softcap: str | None = None  # config key of the final logits' tanh soft-cap (gemma2)
    # GGUF metadata transformers' GGUF loader does not read back: (key under the file's architecture, family
    # config key, dotted into dicts). adapters.gguf_config_fixes sets them on the config the loader made.
    gguf_keys: tuple[tuple[str, str], ...] = ()

    @property
    def fused_qkv(self) -> bool:
        return len(self.qkv) == 1

    @property
    def fused_gate_up(self) -> bool:
        return len(self.gate_up) == 1

    @property
    def attention_pre_norm(self) -> str:
        return self.norms[0]

    @property
    def attention_post_norm(self) -> str | None:
        return self.norms[1]

    @property
    def mlp_pre_norm(self) -> str:
        return self.norms[2]

    @property
    def mlp_post_norm(self) -> str | None:
        return self.norms[3]

    @property
    def post_norms(self) -> bool:
        """Whether each sublayer also normalises its output (four norms per layer)."""
        return self.attention_post_norm is not None


_GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "llama", "Llama", "SmolLM2, Llama 2/3, TinyLlama"),
    Family("mistral", "mistral", "Mistral", "Mistral 7B"),
    Family("qwen2", "qwen2", "Qwen2", "Qwen2, Qwen2.5", qkv_bias_always=True),
    Family("qwen3", "qwen3", "Qwen3", "Qwen3", qk_norms=("q_norm", "k_norm"),
           gguf_keys=(("attention.key_length", "head_dim"),)),
    Family("phi3", "phi3", "Phi3", "Phi-3, Phi-3.5, Phi-4-mini", qkv=("qkv_proj",), gate_up=("gate_up_proj",),
           gguf_keys=(("attention.sliding_window", "sliding_window"),)),
    Family("gemma2", "gemma2", "Gemma2", "Gemma 2", norms=_GEMMA_NORMS, embed_scale_sqrt_hidden=True,
           logit_softcap="final_logit_softcapping",
           gguf_keys=(("attn_logit_softcapping", "attn_logit_softcapping"),
                      ("final_logit_softcapping", "final_logit_softcapping"))),
    Family("gemma3_text", "gemma3", "Gemma3", "Gemma 3 270M, 1B (text-only checkpoints)", norms=_GEMMA_NORMS,
           qk_norms=("q_norm", "k_norm"), embed_scale_sqrt_hidden=True, rope_per_kind=True,
           logit_softcap="final_logit_softcapping",
           gguf_keys=(("rope.freq_base_swa", "rope_parameters.sliding_attention.rope_theta"),
                      ("rope.scaling.type", "rope_parameters.full_attention.rope_type"),
                      ("rope.scaling.factor", "rope_parameters.full_attention.factor"))),
)}
SUPPORTED_FAMILIES = tuple(FAMILIES)


@dataclass(frozen=True)
class TextTower:
    """A multimodal model whose text tower is a supported family: llm-sculpt takes the tower alone
    (pipeline/models/text_tower.py), as a model of `family`.

    Its config holds the family config under `config_key`; its checkpoint holds the family's own
    weights under other names: each `renames` pair maps a checkpoint prefix to the family model's
    prefix (the first that matches wins; other weights, e.g. a vision tower's, are left out)."""

    model_type: str  # the multimodal config's model_type
    family: str  # the text tower's model_type, a key of FAMILIES
    renames: tuple[tuple[str, str], ...]
    config_key: str = "text_config"


TEXT_TOWERS: dict[str, TextTower] = {t.model_type: t for t in (
    # Gemma3ForConditionalGeneration (Gemma 3 4B, 12B, 27B): hub checkpoints name the language model
    # `language_model.model.*` (`language_model.lm_head.*` if untied); transformers 4.52-4.57 saved it
    # as `model.language_model.*` and `lm_head.*`.
    TextTower("gemma3", "gemma3_text", renames=(
        ("language_model.model.", "model."), ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))),
)}


def unsupported_message(model_type: str | None) -> str:
    """The one-line error for a model type that is neither a family nor a known text tower's model."""
    towers = "".join(f", the text tower of {t.model_type} (as {t.family})" for t in TEXT_TOWERS.values())
    return (f"model type {model_type!r} is not supported; llm-sculpt supports {', '.join(SUPPORTED_FAMILIES)}"
            f"{towers} — pick a model of one of these families")


def family_of(model_type: str) -> Family:
    """The family of `model_type`; a one-line error naming the supported ones for anything else."""
    if model_type not in FAMILIES:
        raise ValueError(unsupported_message(model_type))
    return FAMILIES[model_type]


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def sliding_window(config: Any) -> int | None:
    """The family config's sliding window (a config object or its dict); None when it attends fully."""
    if _get(config, "use_sliding_window", True) is False:
        return None
    return _get(config, "sliding_window", None)


def attention_kinds(config: Any) -> list[str]:
    """The attention kind (FULL or SLIDING) of each layer of a dense family config (object or dict)."""
    kinds = _get(config, "layer_types")
    if kinds:
        return [SLIDING if kind == SLIDING and sliding_window(config) else FULL for kind in kinds]
    return [SLIDING if sliding_window(config) else FULL] * _get(config, "num_hidden_layers")
