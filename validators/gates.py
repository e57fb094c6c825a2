"""Pass/fail gates over the validate stage's headline metrics, and the regression check against a baseline.

Pure functions of plain dicts (the metrics the validate stage records in the manifest), so a
gate's verdict can be recomputed from any artifact. Each result carries one readable line
saying which gate failed and by how much.

A backend that runs quantized weights (an int4/int8 ONNX export) cannot match torch's fp32 logits,
so `parity_tolerance` and `max_logit_diff` skip it; it is judged instead by the quantized gates
(the recipe's `validate.quantized`): its perplexity increase over the unquantized sculpted model
(torch) and its greedy agreement with torch (`validators.parity.greedy_agreement`).

Speed gates judge a speed-up measured side by side: its median and the spread of its per-round
ratios (`pipeline.measures.speedup`). When the spread straddles the limit (the margin is smaller
than the run's noise), or there were too few rounds to measure the noise, the result is
`undecidable`, not passed or failed; `failing` says whether the recipe counts it as a failure
(`validate.on_undecidable: fail`) or as a warning (`warn`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.measures.speedup import MIN_PAIRS, UNDECIDABLE, judge_at_least

GATE_STATUSES = ("passed", "failed", "skipped", UNDECIDABLE)
ON_UNDECIDABLE = ("fail", "warn")  # what an undecidable result does to the verdict
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a size like "512MiB", "1.5 GB", "300000" (decimal kB/MB/GB, binary KiB/MiB/GiB)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '512MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"size {value!r} is not a number of bytes or a size like '512MiB', '2GB', '300kB'")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    return int(round(number * _UNITS[unit]))


def format_size(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(count)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class GateResult:
    gate: str  # the recipe key (validate.gates.<gate>, or "baseline")
    status: str  # passed | failed | skipped | undecidable
    detail: str  # what was measured against what limit, for a person
    subject: str | None = None  # the backend, batch size or length the result is about
    value: float | None = None
    limit: float | None = None
    spread: tuple[float, float] | None = None  # low-high of a speed-up's per-round ratios

    @property
    def label(self) -> str:
        return f"{self.gate}[{self.subject}]" if self.subject else self.gate

    def line(self) -> str:
        return f"{self.label} {self.status}: {self.detail}"

    def as_dict(self) -> dict:
        return asdict(self)


def failing(results: list[GateResult], on_undecidable: str = "fail") -> list[GateResult]:
    """The results that make the verdict fail: every failed one, and the undecidable ones when the recipe says
    `on_undecidable: fail`."""
    if on_undecidable not in ON_UNDECIDABLE:
        raise ValueError(f"on_undecidable must be one of {', '.join(ON_UNDECIDABLE)}, not {on_undecidable!r}")
    return [r for r in results if r.status == "failed" or (r.status == UNDECIDABLE and on_undecidable == "fail")]


def check_gates(metrics: dict[str, Any], gates: dict[str, Any]) -> list[GateResult]:
    """One result per gate that is set (per backend / batch / length where the gate has several subjects)."""
    results: list[GateResult] = []
    for gate, limit in gates.items():
        if limit is None:
            continue
        if gate not in _CHECKS:
            raise ValueError(f"unknown gate {gate!r}")
        results.extend(_CHECKS[gate](metrics, limit))
    return results


def _max_ppl_increase(metrics: dict, limit: float) -> list[GateResult]:
    if metrics.get("ppl_increase_pct") is None:
        return [GateResult("max_ppl_increase", "skipped", "the source model was not measured")]
    value = metrics["ppl_increase_pct"]
    detail = (f"perplexity {metrics['ppl']:.3f} vs the source's {metrics['ppl_source']:.3f} ({value:+.2f} %); "
              f"limit +{limit:g} %")
    return [_upper("max_ppl_increase", value, limit, detail, lambda over: f"over by {over:.2f} points")]


def _max_ppl(metrics: dict, limit: float) -> list[GateResult]:
    value = metrics["ppl"]
    return [_upper("max_ppl", value, limit, f"perplexity {value:.3f}; limit {limit:g}",
                   lambda over: f"over by {over:.3f}")]


def _parity(metrics: dict, limit: float) -> list[GateResult]:
    parity = metrics.get("parity") or {}
    if not parity:
        return [GateResult("parity_tolerance", "skipped", "only one backend was measured: nothing to compare")]
    return [_not_quantized("parity_tolerance", name, metrics) or
            _upper("parity_tolerance", abs(p["ppl_diff_pct"]), limit,
                   f"{name} perplexity differs from torch's by {p['ppl_diff_pct']:+.4f} %; limit ±{limit:g} %",
                   lambda over: f"over by {over:.4f} points", subject=name)
            for name, p in parity.items()]


def _logit_diff(metrics: dict, limit: float) -> list[GateResult]:
    parity = metrics.get("parity") or {}
    if not parity:
        return [GateResult("max_logit_diff", "skipped", "only one backend was measured: nothing to compare")]
    return [_not_quantized("max_logit_diff", name, metrics) or
            _upper("max_logit_diff", p["max_abs_logit_diff"], limit,
                   f"{name} logits differ from torch's by up to {p['max_abs_logit_diff']:.3g}; limit {limit:g}",
                   lambda over: f"over by {over:.3g}", subject=name)
            for name, p in parity.items()]


def _not_quantized(gate: str, name: str, metrics: dict) -> GateResult | None:
    """None for a backend with float weights; for a quantized one, a skip that says which gates judge it."""
    weights = (metrics.get("quantized_backends") or {}).get(name)
    if weights is None:
        return None
    return GateResult(gate, "skipped", f"{name} runs {weights} weights, judged by validate.quantized (perplexity "
                      "increase and greedy agreement) instead of fp32 parity", subject=name)


def _quantized(gate: str, check):
    """A gate over every backend that runs quantized weights (skipped when none does)."""
    def run(metrics: dict, limit: float) -> list[GateResult]:
        quantized = metrics.get("quantized_backends") or {}
        parity = metrics.get("parity") or {}
        if not quantized:
            return [GateResult(gate, "skipped", "no backend runs quantized weights")]
        return [check(name, weights, parity[name], metrics, limit) for name, weights in quantized.items()]
    return run


def _quantized_ppl(name: str, weights: str, parity: dict, metrics: dict, limit: float) -> GateResult:
    value = parity["ppl_diff_pct"]
    detail = (f"{name} ({weights} weights) perplexity {metrics['ppl_by_backend'][name]:.3f} vs the unquantized "
              f"sculpted model's {metrics['ppl']:.3f} (torch), {value:+.2f} %; limit +{limit:g} % "
              "(validate.quantized.max_ppl_increase)")
    return _upper("quantized_max_ppl_increase", value, limit, detail, lambda over: f"over by {over:.2f} points",
                  subject=name)


def _quantized_agreement(name: str, weights: str, parity: dict, metrics: dict, limit: float) -> GateResult:
    value = parity["greedy_agreement"]
    detail = (f"{name} ({weights} weights) predicts {100 * value:.1f} % of torch's greedy tokens on the fixed "
              f"prompts; at least {100 * limit:g} % (validate.quantized.min_greedy_agreement)")
    failed = value < limit
    text = f"{detail}, short by {100 * (limit - value):.1f} points" if failed else detail
    return GateResult("quantized_min_greedy_agreement", "failed" if failed else "passed", text, name, float(value),
                      float(limit))


def _speedup(gate: str, key: str, what: str):
    def check(metrics: dict, limit: float) -> list[GateResult]:
        speedups = metrics.get(key) or {}
        if not speedups:
            return [GateResult(gate, "skipped", "no timings of both the source and the sculpted model")]
        return [_at_least(gate, speedup, limit, f"{what} {subject}", subject) for subject, speedup in speedups.items()]
    return check


def _bytes_gate(gate: str, key: str, what: str):
    def check(metrics: dict, limit: int | str) -> list[GateResult]:
        limit_bytes = parse_size(limit)
        values = metrics.get(key) or {}
        if not values:
            return [GateResult(gate, "skipped", f"{what} was not measured")]
        return [_upper(gate, value, limit_bytes, f"{name} {what} {format_size(value)}; limit {format_size(limit_bytes)}",
                       lambda over: f"over by {format_size(over)}", subject=name)
                for name, value in values.items()]
    return check


_CHECKS = {
    "max_ppl_increase": _max_ppl_increase,
    "max_ppl": _max_ppl,
    "parity_tolerance": _parity,
    "max_logit_diff": _logit_diff,
    "min_speedup": _speedup("min_speedup", "decode_speedup_by_batch", "decode tokens/s at batch"),
    "min_prefill_speedup": _speedup("min_prefill_speedup", "prefill_speedup_by_len", "prefill speed at length"),
    "max_memory": _bytes_gate("max_memory", "memory_by_backend", "peak memory added by the model"),
    "max_size": _bytes_gate("max_size", "size_by_backend", "size on disk"),
    "quantized_max_ppl_increase": _quantized("quantized_max_ppl_increase", _quantized_ppl),
    "quantized_min_greedy_agreement": _quantized("quantized_min_greedy_agreement", _quantized_agreement),
}
QUANTIZED_GATES = {"max_ppl_increase": "quantized_max_ppl_increase",  # validate.quantized key -> gate name
                   "min_greedy_agreement": "quantized_min_greedy_agreement"}
GATE_NAMES = tuple(_CHECKS)


def check_baseline(metrics: dict[str, Any], baseline: dict[str, Any], where: str, tolerance_pct: float,
                   speed_tolerance_pct: float | None = None) -> list[GateResult]:
    """Regressions against a previous artifact's validate metrics: perplexity (always), decode speed-up (optional)."""
    change = 100 * (metrics["ppl"] / baseline["ppl"] - 1)
    results = [_upper("baseline", change, tolerance_pct,
                      f"perplexity {metrics['ppl']:.3f} vs {baseline['ppl']:.3f} in {where} ({change:+.2f} %); "
                      f"tolerance +{tolerance_pct:g} %", lambda over: f"over by {over:.2f} points", subject="ppl")]
    if speed_tolerance_pct is not None:
        now, before = headline_decode_speedup(metrics), baseline.get("decode_speedup")
        if now is None or before is None:
            results.append(GateResult("baseline", "skipped", f"no decode speed-up in {'this run' if now is None else where}",
                                      subject="decode_speedup"))
        else:
            floor = before * (1 - speed_tolerance_pct / 100)
            results.append(_at_least("baseline", now, floor, f"decode speed-up ({before:.3f}x in {where}, "
                                     f"tolerance -{speed_tolerance_pct:g} %)", "decode_speedup"))
    return results


def headline_decode_speedup(metrics: dict[str, Any]) -> dict | float | None:
    """The decode speed-up at the smallest batch size (the headline's), with its spread when it has one."""
    by_batch = metrics.get("decode_speedup_by_batch") or {}
    if by_batch:
        return by_batch[min(by_batch, key=int)]
    return metrics.get("decode_speedup")


def _at_least(gate: str, speedup: dict | float, limit: float, what: str, subject: str | None) -> GateResult:
    """A speed-up against the least it may be: decided only when its whole spread is on one side of `limit`."""
    if not isinstance(speedup, dict):  # recorded by an llm-sculpt that timed the source in another run
        return GateResult(gate, UNDECIDABLE, f"{what}: {speedup:.3f}x has no spread of side-by-side rounds "
                          f"(measured by an older llm-sculpt): run `sculpt validate` again", subject, float(speedup),
                          float(limit))
    median, low, high, pairs = speedup["median"], speedup["low"], speedup["high"], speedup["pairs"]
    status = judge_at_least(low, high, pairs, limit)
    measured = (f"{what}: {median:.3f}x the source (middle half of {pairs} round{'s' * (pairs != 1)} "
                f"{low:.3f}-{high:.3f}x); limit {limit:.4g}x")
    if status == "failed":
        detail = f"{measured}, short by {limit - median:.3f}x"
    elif status == UNDECIDABLE and pairs < MIN_PAIRS:
        detail = (f"{measured}: too few rounds to tell noise from a difference; set validate.repeats to "
                  f"{MIN_PAIRS} or more")
    elif status == UNDECIDABLE:
        detail = (f"{measured}: the spread straddles the limit, so this run was too noisy to decide; raise "
                  f"validate.repeats, run on a quieter machine, or set a limit outside the spread")
    else:
        detail = measured
    return GateResult(gate, status, detail, subject, float(median), float(limit), (float(low), float(high)))


def _upper(gate, value, limit, detail, overshoot, subject=None) -> GateResult:
    failed = value > limit
    text = f"{detail}, {overshoot(value - limit)}" if failed else detail
    return GateResult(gate, "failed" if failed else "passed", text, subject, float(value), float(limit))

