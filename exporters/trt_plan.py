"""One description of a TensorRT build: profiles, precision, builder options.

The pipeline's builder, the kit's `build_engine.py` (which reads `plan.json`) and the kit's
`build_engine.sh` (rendered from it) all take their shapes and flags from this, so the
three cannot disagree.

Two optimization profiles share one engine (one copy of the weights): `prefill` runs a
prompt after the single masked cache slot (past = 1), `decode` runs one token after a
cache of 1..max_context slots. TensorRT tunes kernels at each profile's `opt` shape, so
decode does not run on kernels picked for long prompts. They are added in the order of
`onnx_io.PROFILES`, which is how the TensorRT runner finds each one's index in the engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import SculptError

from .onnx_io import DECODE, PREFILL, PROFILES, GraphIO

PLAN_FILE = "plan.json"
PLAN_FORMAT = "llm-sculpt/trt-plan"
HARDWARE_LEVELS = ("none", "ampere+")
BUILDER_FLAG = {"fp16": "FP16", "bf16": "BF16"}  # TensorRT 10 weak-typing flags (removed in 11)

Range = tuple[int, int, int]  # min, opt, max


@dataclass(frozen=True)
class ProfileSpec:
    """A profile in tokens: batch, new tokens per call (seq) and cache slots before them (past)."""

    name: str
    batch: Range
    seq: Range
    past: Range

    def shapes(self, io: GraphIO) -> dict[str, list[list[int]]]:
        """min/opt/max shape of every graph input (mask length = past + seq at each point)."""
        points = [io.input_shapes(self.batch[k], self.seq[k], self.past[k]) for k in range(3)]
        return {name: [list(point[name]) for point in points] for name in io.input_names}


@dataclass(frozen=True)
class BuildPlan:
    graph_dtype: str  # dtype of the ONNX graph: float32 or float16
    precision: str  # fp32 | fp16 | bf16: what the engine computes in
    profiles: tuple[ProfileSpec, ...]
    io: GraphIO
    workspace_mib: int = 2048
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    builder_optimization_level: int | None = None
    onnx_file: str = "model.onnx"
    target: str = "trt-10.3"
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.graph_dtype == "float16" and self.precision != "fp16":
            raise SculptError(f"the ONNX graph is fp16 but build.precision is {self.precision}: set build.precision "
                              "to fp16, or export in fp32 (export.precision fp32)")
        if self.target == "trt-11" and self.builder_flag:
            raise SculptError(f"TensorRT 11 has no {self.precision} builder flag (it reads precision from the graph): "
                              f"export in fp16 (export.precision fp16), or set build.precision fp32")
        if self.hardware_compatibility not in HARDWARE_LEVELS:
            raise SculptError(f"hardware compatibility {self.hardware_compatibility!r} is not one of "
                              f"{', '.join(HARDWARE_LEVELS)}")
        for profile in self.profiles:
            for label, (low, opt, high) in (("batch", profile.batch), ("seq", profile.seq), ("past", profile.past)):
                if not 1 <= low <= opt <= high:
                    raise SculptError(f"profile {profile.name}: {label} needs 1 <= min <= opt <= max, got "
                                      f"{(low, opt, high)}")

    @classmethod
    def from_section(cls, section, io: GraphIO, graph_dtype: str) -> "BuildPlan":
        """From the recipe's `build` section (batch, prompt and context ranges) and the exported graph."""
        slots = io.dummy_slots
        specs = {PREFILL: ProfileSpec(PREFILL, tuple(section.batch), tuple(section.prompt), (slots, slots, slots)),
                 DECODE: ProfileSpec(DECODE, tuple(section.batch), (1, 1, 1), tuple(section.context))}
        return cls(graph_dtype=graph_dtype, precision=section.precision, profiles=tuple(specs[n] for n in PROFILES),
                   io=io, workspace_mib=section.workspace_mib, version_compatible=section.version_compatible,
                   hardware_compatibility=section.hardware_compatibility,
                   builder_optimization_level=section.optimization_level, target=section.target)

    @property
    def strongly_typed(self) -> bool:
        """The graph's dtypes decide (fp16 graph with fp32 islands); else TensorRT 10 picks with a builder flag."""
        return self.graph_dtype == "float16"

    @property
    def builder_flag(self) -> str | None:
        return None if self.strongly_typed else BUILDER_FLAG.get(self.precision)

    def to_dict(self) -> dict:
        """plan.json: plain data, everything the kit's scripts need (they do not import llm-sculpt)."""
        return {
            "format": PLAN_FORMAT, "version": 1, "target": self.target, "onnx": self.onnx_file,
            "graph_dtype": self.graph_dtype, "precision": self.precision, "strongly_typed": self.strongly_typed,
            "builder_flag": self.builder_flag, "workspace_mib": self.workspace_mib,
            "version_compatible": self.version_compatible, "hardware_compatibility": self.hardware_compatibility,
            "builder_optimization_level": self.builder_optimization_level,
            "profiles": [{**asdict(p), "shapes": p.shapes(self.io)} for p in self.profiles],
            "io": self.io.to_dict(), "notes": dict(self.notes),
        }

    def save(self, directory: Path) -> Path:
        path = Path(directory) / PLAN_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def lint_profiles(self) -> dict[str, dict[str, tuple]]:
        """The profiles as the lint takes them: {profile: {input: (min, opt, max)}}."""
        return {p.name: {name: tuple(tuple(s) for s in shapes) for name, shapes in p.shapes(self.io).items()}
                for p in self.profiles}
