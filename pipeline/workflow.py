"""The Python API behind `sculpt`: run the pipeline, or one stage, into a versioned artifact.

    from pipeline.recipe import build_recipe
    from pipeline.workflow import run_pipeline
    artifact = run_pipeline(build_recipe(overrides={"search.ratio": 0.7}))

A failed quality gate raises `GateFailure` (exit status 3 in the CLI) after every selected
stage has run and been recorded; `gate_failures(artifact)` reads the verdict of any version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from .artifacts import Artifact, latest_version, read_manifest
from .compress import get_method, parse_options
from .data import load_corpus, resolve_data_dir
from .errors import GateFailure, SculptError
from .models.loading import describe_source
from .paths import sha256_file
from .recipe import Recipe, build_recipe
from .stages import STAGE_NAMES, STAGES, StageContext


def open_or_create(recipe: Recipe, new: bool = False) -> tuple[Artifact, bool]:
    """The latest version under `recipe.output` if it was made from this very recipe (so an
    interrupted run resumes), else a new version. Returns (artifact, resumed)."""
    root = Path(recipe.output)
    latest = latest_version(root)
    if latest is not None and not new:
        try:
            same = read_manifest(latest).recipe == recipe.to_dict()
        except SculptError:
            same = False
        if same:
            return Artifact.open(latest), True
    return Artifact.create(root, source=source_record(recipe.model.source), recipe=recipe.to_dict()), False


def source_record(ref: str) -> dict:
    """What the manifest records about the source model (hashing a GGUF file; a directory by path)."""
    described = describe_source(ref)
    record = {"id": described.get("id") or described["path"], "kind": described["kind"],
              **{k: v for k, v in described.items() if k not in ("id", "kind")}}
    if described["kind"] == "gguf":
        record["sha256"] = sha256_file(Path(described["path"]))
    return record


def select_stages(names: Iterable[str] | None) -> list:
    if not names:
        return list(STAGES)
    names = list(names)
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise SculptError(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGE_NAMES)}")
    return [stage for stage in STAGES if stage.NAME in names]


def run_stages(ctx: StageContext, stages: list, force: bool = False) -> None:
    """Run `stages` in pipeline order; a stage whose options and inputs are unchanged is skipped."""
    for stage in stages:
        if not force and ctx.artifact.is_current(stage.NAME, stage.options(ctx), stage.inputs(ctx)):
            ctx.say(f"= {stage.NAME}: up to date")
            continue
        ctx.say(f"> {stage.NAME}")
        began = time.perf_counter()
        stage.run(ctx)
        record = ctx.artifact.record(stage.NAME)
        detail = f"skipped: {record.reason}" if record.status == "skipped" else f"{time.perf_counter() - began:.1f} s"
        ctx.say(f"  {stage.NAME} {record.status} ({detail})")


def preflight(recipe: Recipe) -> None:
    """Fail on bad input before an artifact version is created: model, data, method and its options."""
    describe_source(recipe.model.source)
    data_dir = resolve_data_dir(recipe.data.data_dir)
    for name, split in ((recipe.data.calibration, "calibration"), (recipe.data.evaluation, "evaluation")):
        load_corpus(name, split, data_dir)
    parse_options(get_method(recipe.search.method), recipe.search.options)
    if recipe.validate_.baseline:
        from .stages.validate.baseline import load_baseline

        load_baseline(recipe.validate_.baseline)  # a wrong path fails now, not after an hour of search


def run_pipeline(recipe: Recipe, stages: Iterable[str] | None = None, new: bool = False,
                 progress: bool = True) -> Artifact:
    """Run the pipeline (or the named stages) for `recipe`; resumes an interrupted run of the same recipe."""
    selected = select_stages(stages)
    preflight(recipe)
    artifact, resumed = open_or_create(recipe, new=new)
    ctx = StageContext(artifact, recipe, progress)
    ctx.say(f"{'resuming' if resumed else 'artifact'} {artifact.path}")
    run_stages(ctx, selected)
    if any(stage.NAME == "validate" for stage in selected):
        enforce_gates(artifact)
    return artifact


def run_stage(artifact_path: str | Path, stage: str, overrides: dict | None = None, force: bool = False,
              progress: bool = True) -> Artifact:
    """Run one stage in an existing artifact, with its recorded recipe plus `overrides`."""
    artifact = Artifact.open(artifact_path)
    recipe = build_recipe(artifact.manifest.recipe, overrides, where=f"recipe of {artifact.path}")
    ctx = StageContext(artifact, recipe, progress)
    run_stages(ctx, select_stages([stage]), force=force)
    if stage == "validate":
        enforce_gates(artifact)
    return artifact


def gate_failures(artifact: Artifact | str | Path) -> list[str]:
    """One line per failed gate check of the version's recorded validate stage (empty when it passed or
    has not run)."""
    manifest = read_manifest(artifact.path if isinstance(artifact, Artifact) else Path(artifact))
    record = manifest.record("validate")
    if record is None or record.status != "done" or record.metrics.get("gates_passed", True):
        return []
    return list(record.metrics.get("failed_gates") or ["a gate failed (see validate/report.md)"])


def enforce_gates(artifact: Artifact) -> None:
    """Raise GateFailure when the version's validate stage recorded a failed gate."""
    failures = gate_failures(artifact)
    if failures:
        raise GateFailure(failures, artifact)
