"""ArchSpec: the architecture of a sculpted model, layer by layer, as plain data.

It is what a compression method produces, what the slice stage consumes, what the
saved model's config carries (without the keep-indices) and what the manifest records.
Pure data and arithmetic: no torch, no I/O beyond JSON text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

SublayerMode = Literal["keep", "skip", "linear"]
MODES: tuple[str, ...] = ("keep", "skip", "linear")
SPEC_FORMAT = "llm-sculpt/arch-spec"
SPEC_VERSION = 1


class SpecError(ValueError):
    """An architecture spec that cannot describe a valid model."""


@dataclass(frozen=True)
class BaseDims:
    """The dimensions of the dense source model that a spec is cut from."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # q/k/v projections carry a bias (qwen2; llama with attention_bias)
    o_bias: bool = False  # o_proj carries a bias (llama with attention_bias)
    mlp_bias: bool = False  # gate/up/down carry biases (llama with mlp_bias)
    qk_norm: bool = False  # qwen3, gemma3: per-head RMSNorm on queries and keys
    post_norms: bool = False  # gemma: each kept sublayer also normalises its output (four norms per layer)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group)."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaseDims":
        return cls(**data)


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer of a sculpted model.

    `attention` / `mlp` is `keep` (the family's sublayer, possibly narrower),
    `skip` (residual pass-through: no weights, no KV cache) or `linear` (the
    sublayer's pre-norm followed by one bias-free hidden x hidden projection).
    The index tuples name the source heads / channels that survive, in the
    order they appear in the sliced weights; they are None when the weights no
    longer map to source units (a trained replacement, or a counts-only spec).
    """

    source: int
    attention: str = "keep"
    num_heads: int = 0
    num_kv_heads: int = 0
    mlp: str = "keep"
    intermediate_size: int = 0
    attention_out_bias: bool = False  # o_proj bias (e.g. FLAP bias compensation)
    mlp_out_bias: bool = False  # down_proj bias
    q_heads: tuple[int, ...] | None = None
    kv_heads: tuple[int, ...] | None = None
    mlp_channels: tuple[int, ...] | None = None

    @property
    def has_attention(self) -> bool:
        return self.attention == "keep"

    def without_indices(self) -> "LayerSpec":
        return replace(self, q_heads=None, kv_heads=None, mlp_channels=None)

    def to_dict(self, with_indices: bool = True) -> dict[str, Any]:
        data = asdict(self if with_indices else self.without_indices())
        for key in ("q_heads", "kv_heads", "mlp_channels"):
            if data[key] is None:
                del data[key]
            else:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown layer field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        data = dict(data)
        for key in ("q_heads", "kv_heads", "mlp_channels"):
            if data.get(key) is not None:
                data[key] = tuple(int(i) for i in data[key])
        return cls(**data)


@dataclass(frozen=True)
class ArchSpec:
    """A sculpted architecture: the source dims and the layers that remain."""

    base: BaseDims
    layers: tuple[LayerSpec, ...]
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. rounding multiples, method name

    # ---- construction -------------------------------------------------
    @classmethod
    def dense(cls, base: BaseDims) -> "ArchSpec":
        """The identity spec: every layer, head and channel of the source."""
        layers = tuple(
            LayerSpec(
                source=i,
                num_heads=base.num_heads,
                num_kv_heads=base.num_kv_heads,
                intermediate_size=base.intermediate_size,
                q_heads=tuple(range(base.num_heads)),
                kv_heads=tuple(range(base.num_kv_heads)),
                mlp_channels=tuple(range(base.intermediate_size)),
            )
            for i in range(base.num_layers)
        )
        return cls(base=base, layers=layers)

    # ---- queries ------------------------------------------------------
    @property
    def removed_layers(self) -> list[int]:
        kept = {layer.source for layer in self.layers}
        return [i for i in range(self.base.num_layers) if i not in kept]

    @property
    def attention_layers(self) -> list[int]:
        """Positions (in this spec) of the layers that keep attention, hence a KV cache."""
        return [i for i, layer in enumerate(self.layers) if layer.has_attention]

    @property
    def has_indices(self) -> bool:
        return all(
            (layer.attention != "keep" or (layer.q_heads is not None and layer.kv_heads is not None))
            and (layer.mlp != "keep" or layer.mlp_channels is not None)
            for layer in self.layers
        )

    def without_indices(self) -> "ArchSpec":
        return replace(self, layers=tuple(layer.without_indices() for layer in self.layers))

    # ---- validation ---------------------------------------------------
    def validate(self) -> "ArchSpec":
        """Raise SpecError naming the first problem; return self when valid."""
        base = self.base
        if not self.layers:
            raise SpecError("the spec keeps no layers; keep at least one layer")
        if not self.attention_layers:
            raise SpecError("no layer keeps its attention; a causal LM needs at least one attention sublayer")
        sources = [layer.source for layer in self.layers]
        if sources != sorted(set(sources)):
            raise SpecError(f"layer sources must be strictly increasing, got {sources}")
        if sources[0] < 0 or sources[-1] >= base.num_layers:
            raise SpecError(f"layer sources must lie in [0, {base.num_layers}), got {sources}")
        for pos, layer in enumerate(self.layers):
            where = f"layer {pos} (source {layer.source})"
            for name in ("attention", "mlp"):
                if getattr(layer, name) not in MODES:
                    raise SpecError(f"{where}: {name} mode {getattr(layer, name)!r} is not one of {MODES}")
            if layer.has_attention:
                _validate_attention(layer, base, where)
            elif layer.num_heads or layer.num_kv_heads or layer.q_heads or layer.kv_heads or layer.attention_out_bias:
                raise SpecError(f"{where}: attention is {layer.attention!r} but heads or a bias are given")
            if layer.mlp == "keep":
                _validate_mlp(layer, base, where)
            elif layer.intermediate_size or layer.mlp_channels or layer.mlp_out_bias:
                raise SpecError(f"{where}: mlp is {layer.mlp!r} but a width, channels or a bias are given")
        return self

    # ---- serialisation ------------------------------------------------
    def to_dict(self, with_indices: bool = True) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "base": self.base.to_dict(),
            "layers": [layer.to_dict(with_indices) for layer in self.layers],
            "notes": dict(self.notes),
        }

    def to_json(self, with_indices: bool = True) -> str:
        return json.dumps(self.to_dict(with_indices), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        if data.get("format") != SPEC_FORMAT:
            raise SpecError(f"not an llm-sculpt arch spec (format {data.get('format')!r}, expected {SPEC_FORMAT!r})")
        if data.get("version") != SPEC_VERSION:
            raise SpecError(f"arch spec version {data.get('version')} is not supported (this llm-sculpt reads {SPEC_VERSION})")
        return cls(
            base=BaseDims.from_dict(data["base"]),
            layers=tuple(LayerSpec.from_dict(layer) for layer in data["layers"]),
            notes=dict(data.get("notes", {})),
        ).validate()

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        return cls.from_dict(json.loads(text))


def _validate_attention(layer: LayerSpec, base: BaseDims, where: str) -> None:
    if not 1 <= layer.num_kv_heads <= base.num_kv_heads:
        raise SpecError(f"{where}: {layer.num_kv_heads} KV heads; the source has {base.num_kv_heads}, keep 1..{base.num_kv_heads}")
    if layer.num_heads % layer.num_kv_heads:
        raise SpecError(
            f"{where}: {layer.num_heads} query heads do not split evenly over {layer.num_kv_heads} KV heads; "
            "keep the same number of query heads in every kept KV group"
        )
    per_group = layer.num_heads // layer.num_kv_heads
    if not 1 <= per_group <= base.group_size:
        raise SpecError(f"{where}: {per_group} query heads per KV group; the source has {base.group_size}")
    if layer.q_heads is None and layer.kv_heads is None:
        return
    if layer.q_heads is None or layer.kv_heads is None:
        raise SpecError(f"{where}: give both q_heads and kv_heads, or neither")
    if len(layer.kv_heads) != layer.num_kv_heads or len(set(layer.kv_heads)) != len(layer.kv_heads):
        raise SpecError(f"{where}: kv_heads {list(layer.kv_heads)} must be {layer.num_kv_heads} distinct indices")
    if any(not 0 <= g < base.num_kv_heads for g in layer.kv_heads):
        raise SpecError(f"{where}: kv_heads {list(layer.kv_heads)} out of range [0, {base.num_kv_heads})")
    if len(layer.q_heads) != layer.num_heads or len(set(layer.q_heads)) != len(layer.q_heads):
        raise SpecError(f"{where}: q_heads {list(layer.q_heads)} must be {layer.num_heads} distinct indices")
    # The sliced q heads are grouped by the order of kv_heads: new head j uses new KV head j // per_group.
    expected_groups = [g for g in layer.kv_heads for _ in range(per_group)]
    actual_groups = [h // base.group_size if 0 <= h < base.num_heads else -1 for h in layer.q_heads]
    if actual_groups != expected_groups:
        raise SpecError(
            f"{where}: q_heads {list(layer.q_heads)} break the GQA mapping; list {per_group} query heads of each "
            f"kept KV group in kv_heads order (source groups hold {base.group_size} consecutive query heads)"
        )


def _validate_mlp(layer: LayerSpec, base: BaseDims, where: str) -> None:
    if layer.intermediate_size < 1:
        raise SpecError(f"{where}: mlp is 'keep' with width {layer.intermediate_size}; use 'skip' to remove it")
    if layer.mlp_channels is None:
        return
    channels = layer.mlp_channels
    if len(channels) != layer.intermediate_size or len(set(channels)) != len(channels):
        raise SpecError(f"{where}: mlp_channels must be {layer.intermediate_size} distinct indices")
    if any(not 0 <= c < base.intermediate_size for c in channels):
        raise SpecError(f"{where}: mlp_channels out of range [0, {base.intermediate_size})")


# ---- parameter arithmetic ---------------------------------------------------
def attention_parameters(base: BaseDims, num_heads: int, num_kv_heads: int, out_bias: bool = False) -> int:
    d, hd = base.hidden_size, base.head_dim
    q, kv = num_heads * hd, num_kv_heads * hd
    count = d * q + 2 * d * kv + q * d + d  # q, k, v, o and the input RMSNorm
    if base.post_norms:
        count += d  # the post-attention norm
    if base.qkv_bias:
        count += q + 2 * kv
    if base.qk_norm:
        count += 2 * hd
    return count + (d if base.o_bias or out_bias else 0)


def mlp_parameters(base: BaseDims, width: int, out_bias: bool = False) -> int:
    d = base.hidden_size
    count = 3 * d * width + d  # gate, up, down and the MLP's pre-norm
    if base.post_norms:
        count += d  # the post-MLP norm
    if base.mlp_bias:
        count += 2 * width
    return count + (d if base.mlp_bias or out_bias else 0)


def linear_sublayer_parameters(base: BaseDims) -> int:
    return base.hidden_size * base.hidden_size + base.hidden_size  # projection and its pre-norm (no post-norm)


def layer_parameters(base: BaseDims, layer: LayerSpec) -> int:
    total = 0
    if layer.attention == "keep":
        total += attention_parameters(base, layer.num_heads, layer.num_kv_heads, layer.attention_out_bias)
    elif layer.attention == "linear":
        total += linear_sublayer_parameters(base)
    if layer.mlp == "keep":
        total += mlp_parameters(base, layer.intermediate_size, layer.mlp_out_bias)
    elif layer.mlp == "linear":
        total += linear_sublayer_parameters(base)
    return total


def decoder_parameters(spec: ArchSpec) -> int:
    """Parameters in the decoder layers (embeddings, final norm and LM head excluded)."""
    return sum(layer_parameters(spec.base, layer) for layer in spec.layers)


def dense_decoder_parameters(base: BaseDims) -> int:
    return decoder_parameters(ArchSpec.dense(base))


def total_parameters(spec: ArchSpec) -> int:
    """Every parameter of the sculpted model, as `sum(p.numel() for p in model.parameters())` counts them."""
    base = spec.base
    embed = base.vocab_size * base.hidden_size
    head = 0 if base.tie_word_embeddings else embed
    return embed + head + base.hidden_size + decoder_parameters(spec)


def decoder_ratio(spec: ArchSpec) -> float:
    """Fraction of the source's decoder-layer parameters this spec keeps."""
    return decoder_parameters(spec) / dense_decoder_parameters(spec.base)
