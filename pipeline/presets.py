"""Presets: named, measured recipes that fill in every setting a run does not set itself.

`quality` (the default) is the paper's pipeline as we measured it best: the evolutionary search with greedy
reform-aware channel selection, allocated seeds and the reformed final choice (a tie within 2% after reform goes
to the finalist with the better score before reform, which holds up on other text), then ADMM reform on 512
calibration windows of 512 tokens (the paper's 262k tokens; at 0.8 1.4% better on WikiText-2 and 1% on pydoc
than its 128 windows). It beats uniform widths + ADMM at equal kept parameters and the best baseline at 0.7 and
below; at 0.9 and 0.8 FLAP + the same ADMM scores up to 2% better (docs/results.md).
`fast` is the cheapest path that still reforms, for CI smoke runs and laptops. A preset sits under
everything the user writes: recipe file and flags override it key by key, and the manifest records the
preset's name next to the settings it resolved to. The method options of a preset apply only when the run
uses the preset's method (`--method goa` with the quality preset gets goa's defaults); method options the
user gives are merged over the preset's, key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SculptError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str  # what it does and what it costs, for --help and the README
    settings: dict[str, Any] = field(default_factory=dict)  # dotted recipe keys


QUALITY = Preset(
    "quality",
    "evolutionary search (greedy reform-aware MLP channels, allocated seeds, reformed final choice) + ADMM "
    "reform on 512 calibration windows: the paper's pipeline, ahead of uniform widths at equal parameters (FLAP + "
    "ADMM scores up to 2% better at 0.9 and 0.8); 23.3 minutes at 0.8 for SmolLM2-135M (measured on an idle "
    "2-core CPU)",
    {"search.method": "evolution",
     "search.options": {"generations": 4, "mlp_selection": "greedy", "allocated_seeds": True,
                        "final_choice": "reformed", "final_candidates": 1},
     "reform.method": "admm", "reform.samples": 512},
)
FAST = Preset(
    "fast",
    "uniform importance-initialised widths + ADMM reform: no search; 3.5 minutes at 0.8 for SmolLM2-135M (measured "
    "on an idle 2-core CPU)",
    {"search.method": "uniform", "reform.method": "admm"},
)
PRESETS = {preset.name: preset for preset in (QUALITY, FAST)}
PRESET_NAMES = tuple(PRESETS)
DEFAULT_PRESET = QUALITY.name


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SculptError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a recipe as nested dicts, what the user set) with its preset's settings filled in wherever the
    user set nothing. Returns a new dict; `data["preset"]` names the preset (default: quality)."""
    preset = get_preset(data.get("preset") or DEFAULT_PRESET)
    resolved = {**data, "preset": preset.name}
    method = _get(data, "search.method") or preset.settings.get("search.method")
    for dotted, value in preset.settings.items():
        if dotted == "search.options" and method != preset.settings.get("search.method"):
            continue  # another method's options would be unknown keys to this one
        given = _get(data, dotted)
        if given is None:
            resolved = _set(resolved, dotted, value)
        elif isinstance(given, dict) and isinstance(value, dict):  # e.g. --latency-speedup adds one method option
            resolved = _set(resolved, dotted, {**value, **given})
    return resolved


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `dotted` set (the dicts on the path are copied, the rest shared)."""
    key, _, rest = dotted.partition(".")
    child = data.get(key) if isinstance(data.get(key), dict) else {}
    return {**data, key: _set(child, rest, value) if rest else value}
