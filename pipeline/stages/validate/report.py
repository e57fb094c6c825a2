"""The validate report: headline metrics from the measurements, the verdict, and its JSON/Markdown/text forms.

`measured` (what `measure_all` returns) is plain data: evaluation, workload, backends, sculpted,
source, parity, speed. `headline_metrics` flattens it into the numbers gates, baselines, `sculpt list`
and the manifest use. Speed-ups come only from `speed`, the rounds in which this run timed the
source and the sculpted model side by side: each is the median of the per-round ratios with the
spread of those ratios (never a ratio of timings taken in different runs). Everything here is
pure (no model, no files) except `report_text`, which reads a version's report for the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from validators.gates import GateResult, failing, format_size

REPORT_SCHEMA = "llm-sculpt/validate-report"
REPORT_SCHEMA_VERSION = 3  # 3: greedy agreement, quantized backends; 2: timings side by side (`speed`); 1 took
# the source's timings from the cache
MEASURED_KEYS = ("evaluation", "workload", "backends", "sculpted", "source", "parity", "speed", "skipped")
SPEEDUP_KEYS = ("median", "low", "high", "min", "max", "pairs", "spread_pct")  # what the metrics keep of one


def headline_metrics(measured: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers of a report, in the order people read them (see docs/validate.md)."""
    sculpted, source = measured["sculpted"], measured.get("source")
    mine = sculpted["by_backend"]["torch"]
    theirs = source["by_backend"]["torch"] if source else None
    ppl = mine["perplexity"]["ppl"]
    metrics: dict[str, Any] = {"ppl": ppl}
    if theirs:
        metrics["ppl_source"] = theirs["perplexity"]["ppl"]
        metrics["ppl_increase_pct"] = 100 * (ppl / metrics["ppl_source"] - 1)
    metrics["gates_passed"] = None  # filled by `verdict_metrics`; kept here for its place in the order
    speed = measured.get("speed") or {}
    decode = {key: {k: s[k] for k in SPEEDUP_KEYS} for key, s in (speed.get("decode") or {}).items()}
    prefill = {key: {k: s[k] for k in SPEEDUP_KEYS} for key, s in (speed.get("prefill") or {}).items()}
    if decode:
        metrics["decode_speedup"] = decode[min(decode, key=int)]["median"]
    if prefill:
        metrics["prefill_speedup"] = prefill[max(prefill, key=int)]["median"]
    metrics["params"] = sculpted["params"]
    if source:
        metrics["params_source"] = source["params"]
    metrics["checkpoint_bytes"] = sculpted["checkpoint_bytes"]
    if source:
        metrics["checkpoint_bytes_source"] = source["checkpoint_bytes"]
    metrics["eval_tokens"] = mine["perplexity"]["tokens"]
    metrics["ppl_by_backend"] = {name: r["perplexity"]["ppl"] for name, r in sculpted["by_backend"].items()}
    metrics["parity"] = {name: {"ppl_diff_pct": 100 * (metrics["ppl_by_backend"][name] / ppl - 1),
                                **{key: p[key] for key in ("max_abs_logit_diff", "top1_agreement", "greedy_match",
                                                           "greedy_tokens", "greedy_agreement")}}
                         for name, p in measured.get("parity", {}).items()}
    quantized = {name: r["quantized"] for name, r in sculpted["by_backend"].items() if r.get("quantized")}
    if quantized:
        metrics["quantized_backends"] = quantized
    if decode:
        metrics["decode_speedup_by_batch"] = decode
    if prefill:
        metrics["prefill_speedup_by_len"] = prefill
    if speed:
        spreads = [s["spread_pct"] for s in (*decode.values(), *prefill.values())]
        metrics["speed"] = {"method": speed["method"], "warmup": speed["warmup"], "rounds": speed["rounds"],
                            "noise_pct": max(spreads) if spreads else None}
    if "decode" in mine:
        metrics["decode_tokens_per_s"] = {b: r["tokens_per_s"] for b, r in mine["decode"].items()}
    memory = {name: r["memory"]["model_bytes"] for name, r in sculpted["by_backend"].items() if "memory" in r}
    if memory:
        metrics["memory_by_backend"] = memory
    if theirs and "memory" in theirs:
        metrics["memory_source"] = theirs["memory"]["model_bytes"]
    metrics["size_by_backend"] = {name: r["size_bytes"] for name, r in sculpted["by_backend"].items()}
    metrics["backends"] = [name for name, state in measured["backends"].items() if state == "measured"]
    metrics["unavailable_backends"] = {n: s for n, s in measured["backends"].items() if s != "measured"}
    if source:
        metrics["source_from_cache"] = bool(source.get("cache", {}).get("from_cache"))
    return metrics


def verdict_metrics(metrics: dict[str, Any], results: list[GateResult], baseline: dict | None,
                    on_undecidable: str = "fail") -> dict[str, Any]:
    """The manifest's validate metrics: the headline plus the gates' verdict (and the baseline compared with).
    `failed_gates` lists what fails the verdict (undecidable results too under `on_undecidable: fail`);
    `undecided_gates` lists every undecidable result either way."""
    failed = [r.line() for r in failing(results, on_undecidable)]
    out = {**metrics, "gates_passed": not failed, "failed_gates": failed,
           "undecided_gates": [r.line() for r in results if r.status == "undecidable"],
           "on_undecidable": on_undecidable, "gates": {r.label: r.status for r in results}}
    if baseline is not None:
        out["baseline"] = baseline
    return out


def build_report(measured: dict[str, Any], metrics: dict[str, Any], results: list[GateResult],
                 baseline: dict | None, version: str, on_undecidable: str = "fail") -> dict[str, Any]:
    return {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, "version": version,
            **{key: measured.get(key) for key in MEASURED_KEYS}, "headline": metrics,
            "gates": [r.as_dict() for r in results], "passed": not failing(results, on_undecidable),
            "on_undecidable": on_undecidable, "baseline": baseline}


# --- text forms ------------------------------------------------------------------------------------------------

def markdown(report: dict[str, Any], charts: list[str]) -> str:
    lines = [f"# Validation report: {report['version']}", "", _evaluation_line(report), ""]
    lines += ["## Verdict", "", _verdict_line(report), ""]
    if report["gates"]:
        lines += _md_table(("gate", "status", "detail"), _gate_rows(report)) + [""]
    for title, (headers, rows) in _sections(report):
        lines += [f"## {title}", "", *_md_table(headers, rows), ""]
    lines += ["## Backends", ""] + [f"- **{name}**: {state}" for name, state in report["backends"].items()] + [""]
    lines += [f"- {note}" for note in _notes(report)]
    lines += [""] + [f"![{name}]({name})" for name in charts]
    return "\n".join(lines).rstrip() + "\n"


def terminal(report: dict[str, Any]) -> str:
    """The report for a terminal: verdict, then the same tables as the Markdown, aligned."""
    lines = [_evaluation_line(report), _verdict_line(report)]
    lines += [f"  {label} {status}: {detail}" for label, status, detail in _gate_rows(report)]
    for title, (headers, rows) in _sections(report):
        lines += ["", title] + _text_table(headers, rows)
    lines += [""] + [f"{name}: {state}" for name, state in report["backends"].items()]
    lines += _notes(report)
    return "\n".join(lines)


def _evaluation_line(report: dict) -> str:
    ev = report["evaluation"]
    return (f"evaluation: {ev['corpus']} ({ev['split']} split), {ev['windows']} windows of {ev['seq_len']} tokens "
            f"({ev['tokens']} tokens scored)")


def _verdict_line(report: dict) -> str:
    gates = report["gates"]
    failed = [g for g in gates if g["status"] == "failed"]
    undecided = [g for g in gates if g["status"] == "undecidable"]
    policy = report.get("on_undecidable", "fail")
    if not gates:
        return "verdict: no gates set (validate.gates); measurements only"
    counted = "counted as failed" if policy == "fail" else "a warning, not counted"
    noisy = (f"; {len(undecided)} undecidable, {counted}: the timings were too noisy to decide "
             f"(validate.on_undecidable: {policy})") if undecided else ""
    if not report["passed"]:
        return f"verdict: FAILED ({len(failed)} of {len(gates)} gate checks failed{noisy})"
    return f"verdict: PASSED ({len(gates)} gate checks{noisy})"


def _gate_rows(report: dict) -> list[tuple[str, str, str]]:
    return [(g["gate"] + (f"[{g['subject']}]" if g["subject"] else ""), g["status"], g["detail"])
            for g in report["gates"]]


def _sections(report: dict) -> list[tuple[str, tuple[tuple[str, ...], list[tuple[str, ...]]]]]:
    sections = [("Quality", _quality(report))]
    if report.get("parity"):
        sections.append(("Parity with torch (fixed prompts)", _parity(report)))
    if "decode" in report["sculpted"]["by_backend"]["torch"]:
        sections.append(("Speed (median [p10-p90]; speed-up: median of the per-round ratios [middle half])",
                         _speed(report)))
    sections.append(("Memory and size", _footprint(report)))
    if report.get("baseline"):
        sections.append(("Baseline", _baseline(report)))
    return sections


def _quality(report: dict):
    source = report.get("source")
    reference = source["by_backend"]["torch"]["perplexity"]["ppl"] if source else None
    rows = []
    if source:
        rows.append(("source", "torch", f"{reference:.3f}", "", _count(source["params"])))
    for name, result in report["sculpted"]["by_backend"].items():
        ppl = result["perplexity"]["ppl"]
        change = f"{100 * (ppl / reference - 1):+.2f} %" if reference else ""
        rows.append(("sculpted", _backend(name, result), f"{ppl:.3f}", change, _count(report["sculpted"]["params"])))
    return ("model", "backend", "perplexity", "vs source", "parameters"), rows


def _backend(name: str, result: dict) -> str:
    """A backend's name, with the weights it runs when they are quantized (e.g. `onnxruntime (int4)`)."""
    return f"{name} ({result['quantized']})" if result.get("quantized") else name


def _parity(report: dict):
    torch_ppl = report["sculpted"]["by_backend"]["torch"]["perplexity"]["ppl"]
    rows = []
    for name, p in report["parity"].items():
        ppl = report["sculpted"]["by_backend"][name]["perplexity"]["ppl"]
        rows.append((_backend(name, report["sculpted"]["by_backend"][name]), f"{100 * (ppl / torch_ppl - 1):+.4f} %",
                     f"{p['max_abs_logit_diff']:.3g}", f"{p['mean_abs_logit_diff']:.3g}",
                     f"{100 * p['top1_agreement']:.1f} %", f"{p['greedy_match']}/{p['greedy_tokens']}",
                     f"{100 * p['greedy_agreement']:.1f} %"))
    return ("backend", "ppl diff", "max |dlogit|", "mean |dlogit|", "top-1 agree", "greedy match",
            "greedy agreement"), rows


def _speed(report: dict):
    source = report.get("source")
    theirs = source["by_backend"]["torch"] if source else {}
    speed = report.get("speed") or {}
    backends = report["sculpted"]["by_backend"]
    compared = bool(speed.get("compared"))
    headers = ("measure", *(["source [torch]"] if theirs else []), *(f"sculpted [{n}]" for n in backends),
               *(["speed-up [torch]"] if compared else []))
    rows = []
    for length in backends["torch"]["prefill"]:
        cells = [_ms(r["prefill"].get(length)) for r in backends.values()]
        speedup = [_speedup(speed["prefill"].get(length))] if compared else []
        rows.append((f"prefill {length} tokens", *([_ms(theirs["prefill"][length])] if theirs else []), *cells,
                     *speedup))
    for batch in backends["torch"]["decode"]:
        cells = [_tps(r["decode"].get(batch)) for r in backends.values()]
        speedup = [_speedup(speed["decode"].get(batch))] if compared else []
        rows.append((f"decode batch {batch}", *([_tps(theirs["decode"][batch])] if theirs else []), *cells, *speedup))
    return headers, rows


def _footprint(report: dict):
    source = report.get("source")
    rows = []
    if source:
        memory = source["by_backend"]["torch"].get("memory")
        rows.append(("source", "torch", _bytes(memory["model_bytes"]) if memory else "-",
                     _bytes(source["checkpoint_bytes"])))
    for name, result in report["sculpted"]["by_backend"].items():
        memory = result.get("memory")
        rows.append(("sculpted", name, _bytes(memory["model_bytes"]) if memory else "-", _bytes(result["size_bytes"])))
    return ("model", "backend", "peak memory added", "size on disk"), rows


def _baseline(report: dict):
    base = report["baseline"]
    rows = [("artifact", f"{base['version']} ({base['path']})"), ("content hash", base["content_hash"][:16] + "…"),
            ("perplexity there", f"{base['ppl']:.3f}"), ("perplexity here", f"{report['headline']['ppl']:.3f}"),
            ("change", f"{base['ppl_change_pct']:+.2f} % (tolerance +{base['tolerance_pct']:g} %)")]
    return ("", "value"), rows


def _notes(report: dict) -> list[str]:
    notes = []
    source = report.get("source")
    if source and source.get("cache", {}).get("from_cache"):
        cache = source["cache"]
        notes.append(f"source perplexity, parameters and size came from the cache ({cache['file']}, measured "
                     f"{cache['measured_at']}); its timings and memory were measured in this run")
    speed = report.get("speed")
    if speed:
        noise = report["headline"].get("speed", {}).get("noise_pct")
        noisy = f"; noise: the widest middle half of a speed-up's ratios spans {noise:.1f} % of its median" \
            if noise is not None else ""
        notes.append(f"timings: {', '.join(speed['timed'])} timed side by side in this run, {speed['rounds']} "
                     f"interleaved rounds after {speed['warmup']} warm-up; a speed-up is the median of the "
                     f"per-round ratios [25th-75th percentile]{noisy}")
    for what, why in (report.get("skipped") or {}).items():
        notes.append(f"{what}: {why}")
    if report["workload"].get("memory"):
        notes.append("peak memory added: the model's peak resident memory (CUDA peak allocation on a GPU), "
                     "measured in a fresh process")
    return notes


def _md_table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)]


def _text_table(headers, rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]


def _ms(timing: dict | None) -> str:
    if not timing:
        return "-"
    return f"{1e3 * timing['median_s']:.1f} ms [{1e3 * timing['p10_s']:.1f}-{1e3 * timing['p90_s']:.1f}]"


def _tps(result: dict | None) -> str:
    if not result:
        return "-"
    step = result["step"]
    batch = result["batch"]
    return f"{result['tokens_per_s']:.1f} tok/s [{batch / step['p90_s']:.1f}-{batch / step['p10_s']:.1f}]"


def _speedup(speedup: dict | None) -> str:
    if not speedup:
        return "-"
    return f"{speedup['median']:.2f}x [{speedup['low']:.2f}-{speedup['high']:.2f}]"


def _bytes(count: int) -> str:
    return format_size(count)


def _count(value: int) -> str:
    return f"{value / 1e6:.2f} M"


def report_text(version_dir: Path) -> str | None:
    """The terminal form of a version's validate report, or None when validate has not completed."""
    from ...artifacts import read_manifest

    record = read_manifest(version_dir).record("validate")
    path = Path(version_dir) / "validate" / "report.json"
    if record is None or record.status != "done" or not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("schema") != REPORT_SCHEMA:
        return None  # written by an older llm-sculpt: its metrics are still in the manifest
    return terminal(report)
