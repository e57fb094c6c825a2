"""Specs that remove whole layers or sublayers, and how many of them a target ratio asks for.

The counting rule, shared by every depth and sublayer method: remove the *fewest* units whose
decoder-parameter ratio is not above the target (never more parameters than asked for, so
methods compare at equal budget); the achieved ratio is reported. A unit is coarse (a SmolLM2
block is 1/30 of the decoder, an attention sublayer 1/120), so the achieved ratio can sit up
to one unit below the target. When even the most a method may remove keeps more than the
target, the method raises a SculptError naming the lowest ratio it can reach.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from pipeline.errors import SculptError
from pipeline.models.spec import ArchSpec, BaseDims, LayerSpec

RATIO_TOLERANCE = 1e-9  # 27/30 layers is "0.9" even when float rounding says 0.9000000000000001


def dense_layer(base: BaseDims, source: int, **changes) -> LayerSpec:
    """Source layer `source` with every head and channel, then `changes` (e.g. attention="skip")."""
    fields = dict(source=source, num_heads=base.num_heads, num_kv_heads=base.num_kv_heads,
                  intermediate_size=base.intermediate_size, q_heads=tuple(range(base.num_heads)),
                  kv_heads=tuple(range(base.num_kv_heads)), mlp_channels=tuple(range(base.intermediate_size)))
    if changes.get("attention", "keep") != "keep":
        fields.update(num_heads=0, num_kv_heads=0, q_heads=None, kv_heads=None)
    if changes.get("mlp", "keep") != "keep":
        fields.update(intermediate_size=0, mlp_channels=None)
    fields.update(changes)
    return LayerSpec(**fields)


def spec_without(base: BaseDims, layers: Iterable[int] = (), attention: Iterable[int] = (),
                 replace: dict[int, LayerSpec] | None = None, notes: dict | None = None) -> ArchSpec:
    """The dense spec minus whole `layers`, minus the attention sublayers of `attention`, with the
    layer specs in `replace` (keyed by source index) put in place of the dense ones."""
    removed, skipped, replace = set(layers), set(attention), dict(replace or {})
    kept = []
    for source in range(base.num_layers):
        if source in replace:
            kept.append(replace[source])
        elif source not in removed:
            kept.append(dense_layer(base, source, attention="skip") if source in skipped else dense_layer(base, source))
    return ArchSpec(base, tuple(kept), notes=dict(notes or {})).validate()


def fewest_units_for(ratio: float, ratio_after: Callable[[int], float], most: int, method: str,
                     unit: str, hint: str) -> int:
    """The smallest count k in 0..most with ratio_after(k) <= ratio (ratio_after decreasing in k).

    Raises a SculptError naming the lowest reachable ratio when even `most` units keep too much.
    """
    for count in range(most + 1):
        if ratio_after(count) <= ratio + RATIO_TOLERANCE:
            return count
    lowest = ratio_after(most)
    raise SculptError(
        f"{method} cannot reach decoder ratio {ratio:g}: removing the most it can ({most} {unit}) still keeps "
        f"{lowest:.4f} of the decoder parameters; use --ratio {math.ceil(lowest * 1000) / 1000:g} or higher, {hint}"
    )

