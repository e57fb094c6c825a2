"""Will the TensorRT ONNX parser of a target version take this graph? A static check, no TensorRT needed.

It reads the operator table of the target (exporters/trt_ops/<target>.json, with its sources)
and reports, node by node (subgraphs and local functions included): ONNX Runtime-only contrib
ops, ops the parser lacks, sequence ops, `If` nodes that branch on the KV cache, Attention
nodes fed a past cache, an opset newer than the target's, and zero-sized dimensions, in the
graph or in the optimization profiles a build would use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import onnx

from pipeline.errors import SculptError
from pipeline.targets import TRT_TARGETS

TABLES = Path(__file__).with_name("trt_ops")
STANDARD_DOMAINS = ("", "ai.onnx")
ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "ai.onnx.contrib",
               "com.microsoft.extensions", "ai.onnx.ml")
SEQUENCE_OPS = ("SplitToSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
                "SequenceInsert", "SequenceLength", "SequenceMap", "ConcatFromSequence")
CACHE_INPUT_PREFIXES = ("past_key_values", "past_key", "past_value", "use_cache_branch", "cache")

Profiles = Mapping[str, Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]


@dataclass(frozen=True)
class Finding:
    severity: str  # "error": the parser or builder would refuse it; "warning": works with care
    code: str  # unsupported-op, contrib-op, custom-op, sequence-op, cache-branch-if, if, attention-past, opset,
    #            zero-dim, sequence-type, profile
    message: str
    where: str = ""  # the first node, input or profile it was found at
    count: int = 1  # how many places share this finding


@dataclass
class LintReport:
    target: str
    tensorrt: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        """Record `finding`, folding it into an earlier one with the same message (one line per op type)."""
        for index, known in enumerate(self.findings):
            if (known.severity, known.code, known.message) == (finding.severity, finding.code, finding.message):
                self.findings[index] = replace(known, count=known.count + 1)
                return
        self.findings.append(finding)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def as_dict(self) -> dict:
        return {"target": self.target, "tensorrt": self.tensorrt, "ok": self.ok,
                "findings": [asdict(f) for f in self.findings]}

    def lines(self) -> list[str]:
        head = f"{self.target} (TensorRT {self.tensorrt}): " + (
            "OK" if self.ok else f"{len(self.errors)} error(s)") + (
            f", {len(self.findings) - len(self.errors)} warning(s)" if len(self.findings) > len(self.errors) else "")
        return [head] + [f"  {f.severity} [{f.code}] {f.where + ': ' if f.where else ''}{f.message}"
                         + (f" ({f.count} places)" if f.count > 1 else "") for f in self.findings]


@lru_cache(maxsize=None)
def load_table(target: str) -> dict:
    path = TABLES / f"{target}.json"
    if target not in TRT_TARGETS or not path.is_file():
        raise SculptError(f"unknown TensorRT target {target!r}: choose one of {', '.join(TRT_TARGETS)}")
    return json.loads(path.read_text())


def lint(model: onnx.ModelProto | str | Path, target: str, profiles: Profiles | None = None) -> LintReport:
    """Check `model` (a ModelProto or a path; weights are not loaded) against `target`'s parser."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    table = load_table(target)
    report = LintReport(target, table["tensorrt"])
    _check_opset(model, table, report)
    functions = {(f.domain, f.name): f for f in model.functions}
    _check_nodes(model.graph.node, _producers(model.graph.node), table, functions, report, set())
    _check_io(model.graph, report)
    if profiles:
        _check_profiles(model.graph, profiles, table, report)
    return report


def _check_opset(model: onnx.ModelProto, table: dict, report: LintReport) -> None:
    for entry in model.opset_import:
        if entry.domain in STANDARD_DOMAINS and not table["min_opset"] <= entry.version <= table["max_opset"]:
            report.add(Finding("error", "opset", (
                f"the graph uses ONNX opset {entry.version}; TensorRT {table['tensorrt']} parses opsets "
                f"{table['min_opset']}-{table['max_opset']}: re-export with --opset {min(18, table['max_opset'])}")))


def _check_nodes(nodes, producers: dict, table: dict, functions: dict, report: LintReport, seen: set) -> None:
    supported = set(table["supported"])
    for node in nodes:
        where = node.name or node.op_type
        if node.domain not in STANDARD_DOMAINS:
            function = functions.get((node.domain, node.op_type))
            if function is not None:
                if (node.domain, node.op_type) not in seen:  # a local function: check what it expands to
                    seen.add((node.domain, node.op_type))
                    _check_nodes(function.node, _producers(function.node), table, functions, report, seen)
            elif node.domain in ORT_DOMAINS:
                report.add(Finding("error", "contrib-op", (
                    f"{node.domain}::{node.op_type} is an ONNX Runtime contrib op; TensorRT has no importer for it: "
                    "export without ORT-specific fusions (no onnxruntime.transformers optimizer)"), where))
            else:
                report.add(Finding("error", "custom-op", (
                    f"{node.domain}::{node.op_type} is a custom-domain op: TensorRT needs a plugin for it"), where))
            continue
        if node.op_type in SEQUENCE_OPS:
            report.add(Finding("error", "sequence-op", (
                f"{node.op_type} makes or reads an ONNX sequence, which no TensorRT version parses: pass KV tensors "
                "as separate inputs and outputs, not as a list"), where))
        elif node.op_type not in supported:
            report.add(Finding("error", "unsupported-op", (
                f"{node.op_type} is not in the TensorRT {table['tensorrt']} ONNX parser's operator table"), where))
        elif node.op_type == "If":
            _check_if(node, producers, report)
        _check_restrictions(node, table, report)
        for attribute in node.attribute:  # If/Loop/Scan bodies
            for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _check_nodes(graph.node, {**producers, **_producers(graph.node)}, table, functions, report, seen)


def _check_if(node, producers: dict, report: LintReport) -> None:
    sources = _graph_inputs_behind(node.input[0], producers)
    cache = sorted(s for s in sources if s.startswith(CACHE_INPUT_PREFIXES))
    if cache:
        report.add(Finding("error", "cache-branch-if", (
            f"If branches on the KV cache ({', '.join(cache[:3])}): a TensorRT engine needs one static graph; "
            "export a single graph that always takes a past (one masked slot for a prompt)"), node.name or "If"))
    else:
        report.add(Finding("warning", "if", (
            "data-dependent If: both branches must give outputs of the same rank, and it splits the engine"),
            node.name or "If"))


def _check_restrictions(node, table: dict, report: LintReport) -> None:
    rule = table.get("restrictions", {}).get(node.op_type)
    if not rule:
        return
    used = [i for i in rule.get("unsupported_inputs", []) if i < len(node.input) and node.input[i]]
    if used:
        code = "attention-past" if node.op_type == "Attention" else "restricted-input"
        report.add(Finding("error", code, f"{node.op_type} inputs {used}: {rule['why']}",
                                       node.name or node.op_type))


def _producers(nodes) -> dict:
    return {output: node for node in nodes for output in node.output if output}


def _graph_inputs_behind(value: str, producers: dict) -> set[str]:
    """Names of the values with no producer (graph inputs, initializers) that `value` is computed from."""
    found, stack, visited = set(), [value], set()
    while stack:
        name = stack.pop()
        if name in visited or not name:
            continue
        visited.add(name)
        node = producers.get(name)
        if node is None:
            found.add(name)
        else:
            stack.extend(node.input)
    return found


def _check_io(graph, report: LintReport) -> None:
    for value in (*graph.input, *graph.output):
        kind = value.type.WhichOneof("value")
        if kind in ("sequence_type", "optional_type", "map_type"):
            report.add(Finding("error", "sequence-type", (
                f"a {kind.removesuffix('_type')} as graph I/O: TensorRT binds tensors only"), value.name))
        elif kind == "tensor_type" and any(d.HasField("dim_value") and d.dim_value == 0
                                           for d in value.type.tensor_type.shape.dim):
            report.add(Finding("error", "zero-dim", (
                "a dimension fixed at 0: TensorRT 10 is not known to bind empty tensors reliably"), value.name))


def _check_profiles(graph, profiles: Profiles, table: dict, report: LintReport) -> None:
    inputs = {v.name: v for v in graph.input}
    confirmed = table.get("zero_min_profile") != "unconfirmed"
    for profile_name, shapes in profiles.items():
        for name in sorted(set(inputs) - set(shapes)):
            report.add(Finding("error", "profile", f"input {name} has no shape in the profile",
                                           profile_name))
        for name, (low, opt, high) in shapes.items():
            where = f"{profile_name}/{name}"
            if name not in inputs:
                report.add(Finding("error", "profile", "the graph has no such input", where))
                continue
            dims = inputs[name].type.tensor_type.shape.dim
            if not len(low) == len(opt) == len(high) == len(dims):
                report.add(Finding("error", "profile", f"rank {len(dims)} in the graph, not "
                                                                    f"{len(low)}/{len(opt)}/{len(high)}", where))
                continue
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                report.add(Finding("error", "profile", f"needs min <= opt <= max, got {low} {opt} {high}",
                                               where))
            for axis, dim in enumerate(dims):
                if dim.HasField("dim_value") and not low[axis] == opt[axis] == high[axis] == dim.dim_value:
                    report.add(Finding("error", "profile", (
                        f"axis {axis} is fixed at {dim.dim_value} in the graph"), where))
            if 0 in low:
                report.add(Finding("warning" if confirmed else "error", "zero-dim", (
                    f"the profile's minimum shape {tuple(low)} has a zero-sized dimension: "
                    + ("reported to work on TensorRT 11.1; an empty binding still needs a non-null address"
                       if confirmed else f"TensorRT {table['tensorrt']} is not known to accept it; start the cache "
                                         "at one masked slot (min past 1)")), where))
