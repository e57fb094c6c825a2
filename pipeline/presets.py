"""Presets: named, measured recipes that fill in every setting a run does not set itself.

`quality` (the default) is the best pipeline we measured at each ratio, then ADMM reform on 512 calibration
windows of 512 tokens (the paper's 262k tokens; at 0.8 1.4% better on WikiText-2 and 1% on pydoc than 128).
Below 0.8 the search is the paper's evolutionary search with greedy reform-aware channel selection, allocated
seeds and the reformed final choice (a tie within 2% after reform goes to the finalist with the better score
before reform, which holds up on other text): it beats the best baseline with the same reform by 12-21% at 0.7,
0.6 and 0.5. At 0.8 and above FLAP's widths measured better with the same reform (at 0.8: 31.14 against 31.40 on
the whole WikiText-2 test split, 20.46 against 20.78 on pydoc; at 0.9 on 128 reform windows 25.33 against 25.41),
so there the search is FLAP's, in a fraction of the time (docs/results.md).
`fast` is the cheapest path that still reforms, for CI smoke runs and laptops. A preset sits under
everything the user writes: recipe file and flags override it key by key, and the manifest records the
preset's name next to the settings it resolved to. The method options of a preset apply only when the run
uses the preset's method (`--method goa` with the quality preset gets goa's defaults); method options the
user gives are merged over the preset's, key by key, and name the preset's own method: `--latency-speedup`
and `--executor ray` run the evolutionary search at every ratio.
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
    # (lowest search.ratio, settings over `settings`): where another search measured best; the first whose bound
    # the ratio reaches applies, and only when the run names no search method, method options or Ray executor
    by_ratio: tuple[tuple[float, dict[str, Any]], ...] = ()

    def settings_at(self, ratio: float) -> dict[str, Any]:
        """The settings this preset gives a run at `ratio` (search.ratio)."""
        for lowest, settings in self.by_ratio:
            if ratio >= lowest:
                return {**self.settings, **settings}
        return dict(self.settings)


QUALITY = Preset(
    "quality",
    "the best search measured for the ratio + ADMM reform on 512 calibration windows: below 0.8 the paper's "
    "evolutionary search (greedy reform-aware MLP channels, allocated seeds, reformed final choice), 12-21% ahead "
    "of the best baseline at 0.7-0.5 (23.3 minutes at 0.8 for SmolLM2-135M on an idle 2-core CPU with --method "
    "evolution); at 0.8 and above FLAP's widths, which measured 0.3-2% better there (22.9 minutes at 0.8 on one "
    "core shared with other jobs, 74 s of it the search)",
    {"search.method": "evolution",
     "search.options": {"generations": 4, "mlp_selection": "greedy", "allocated_seeds": True,
                        "final_choice": "reformed", "final_candidates": 1},
     "reform.method": "admm", "reform.samples": 512},
    by_ratio=((0.8, {"search.method": "flap", "search.options": {}}),),
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


def apply_preset(data: dict[str, Any], default_ratio: float) -> dict[str, Any]:
    """`data` (a recipe as nested dicts, what the user set) with its preset's settings filled in wherever the
    user set nothing, those for its search.ratio (`default_ratio` when it sets none). Returns a new dict;
    `data["preset"]` names the preset (default: quality)."""
    preset = get_preset(data.get("preset") or DEFAULT_PRESET)
    resolved = {**data, "preset": preset.name}
    names_its_search = (get_dotted(data, "search.method") is not None or get_dotted(data, "search.options") is not None
                        or get_dotted(data, "search.executor") == "ray")  # Ray scores the evolutionary search's candidates
    settings = preset.settings if names_its_search else preset.settings_at(_ratio(data, default_ratio))
    method = get_dotted(data, "search.method") or settings.get("search.method")
    for dotted, value in settings.items():
        if dotted == "search.options" and method != settings.get("search.method"):
            continue  # another method's options would be unknown keys to this one
        given = get_dotted(data, dotted)
        if given is None:
            resolved = _set(resolved, dotted, value)
        elif isinstance(given, dict) and isinstance(value, dict):  # e.g. --latency-speedup adds one method option
            resolved = _set(resolved, dotted, {**value, **given})
    return resolved


def _ratio(data: dict[str, Any], default_ratio: float) -> float:
    """The run's search.ratio; not a number: the default's settings, and the recipe's validation names the error."""
    given = get_dotted(data, "search.ratio")
    try:
        return default_ratio if given is None else float(given)
    except (TypeError, ValueError):
        return default_ratio


def get_dotted(data: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key ("search.options.generations") of nested dicts; None where it is not set."""
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
