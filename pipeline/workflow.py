"""The Python API behind `sculpt`: run the pipeline, or one stage, into a versioned artifact.

    from pipeline.recipe import build_recipe
    from pipeline.workflow import run_pipeline
    artifact = run_pipeline(build_recipe(overrides={"search.ratio": 0.7}))

A failed quality gate raises `GateFailure` (exit status 3 in the CLI) after every selected
stage has run and been recorded; `gate_failures(artifact)` reads the verdict of any version.

Stage modules are imported as their stage runs. The full pipeline records a stage whose optional
extra is not installed (export and build without `onnx`) as skipped, the install command as the
reason, and goes on (validate then measures torch alone); a stage asked for by name raises that
reason as a `MissingExtra` error instead. A stage that cannot apply to the artifact as it is (a
TensorRT build of an int4 export) is handled the same way (`StageNotApplicable`).
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
from .presets import get_dotted
from .recipe import Recipe, build_recipe
from .stages import (
    STAGE_NAMES,
    STAGES,
    StageContext,
    StageNotApplicable,
    check_stage_names,
    load_stage,
    needs_extra,
)


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


def select_stages(names: Iterable[str] | None) -> list[str]:
    """The names of the stages to run, in pipeline order (all of them when `names` is empty)."""
    if not names:
        return list(STAGE_NAMES)
    names = list(names)
    check_stage_names(names)
    return [name for name in STAGE_NAMES if name in names]


def run_stages(ctx: StageContext, names: list[str], force: bool = False, skip_missing_extras: bool = False) -> None:
    """Run the stages `names` in pipeline order; a stage whose options and inputs are unchanged is skipped.

    A stage whose optional extra is not installed (MissingExtra), or that cannot apply to the artifact
    (StageNotApplicable), raises, or with `skip_missing_extras` is recorded as skipped with that reason while
    the others go on.
    """
    for name in names:
        try:
            with needs_extra(f"stage {name}", STAGES[name]):
                _run_stage(ctx, load_stage(name), force)
        except StageNotApplicable as missing:
            if not skip_missing_extras:
                raise
            ctx.artifact.skip(name, str(missing))
            ctx.say(f"  {name} skipped ({missing})")


def _run_stage(ctx: StageContext, stage, force: bool) -> None:
    if not force and ctx.artifact.is_current(stage.NAME, stage.options(ctx), stage.inputs(ctx)):
        ctx.say(f"= {stage.NAME}: up to date")
        return
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
    if recipe.search.executor == "ray":  # without the ray extra: one line naming the install, before any work
        from .stages.ray_executor import import_ray

        import_ray()
    if recipe.validate_.baseline:
        from .stages.validate.baseline import load_baseline

        load_baseline(recipe.validate_.baseline)  # a wrong path fails now, not after an hour of search


def run_pipeline(recipe: Recipe, stages: Iterable[str] | None = None, new: bool = False,
                 progress: bool = True) -> Artifact:
    """Run the pipeline (or the named stages) for `recipe`; resumes an interrupted run of the same recipe."""
    selected = select_stages(stages)
    preflight(recipe)
    if stages:  # stages asked for by name must run: a missing extra fails now, before any work
        for name in selected:
            load_stage(name)
    artifact, resumed = open_or_create(recipe, new=new)
    ctx = StageContext(artifact, recipe, progress)
    ctx.say(f"{'resuming' if resumed else 'artifact'} {artifact.path}")
    run_stages(ctx, selected, skip_missing_extras=not stages)
    if "validate" in selected:
        enforce_gates(artifact)
    return artifact


def run_stage(artifact_path: str | Path, stage: str, overrides: dict | None = None, force: bool = False,
              progress: bool = True) -> Artifact:
    """Run one stage in an existing artifact, with its recorded recipe plus `overrides`.

    Overrides that change the recipe are written into it (the manifest and `recipe.yaml`) once the stage has run,
    so the version keeps saying what made it. One that would change the settings of an earlier stage the version
    has run is refused before any work: the recipe would then name settings that stage was not run with."""
    load_stage(stage)  # an unknown stage or a missing extra fails before anything else
    artifact = Artifact.open(artifact_path)
    where = f"recipe of {artifact.path}"
    recorded = build_recipe(artifact.manifest.recipe, where=where)
    recipe = build_recipe(artifact.manifest.recipe, overrides, where=where)
    changed = changed_keys(recorded, recipe, overrides or {})
    if changed:
        refuse_changes_to_earlier_stages(artifact, recorded, recipe, stage, changed)
    ctx = StageContext(artifact, recipe, progress)
    run_stages(ctx, select_stages([stage]), force=force)
    if changed:
        artifact.set_recipe(recipe.to_dict())
    if stage == "validate":
        enforce_gates(artifact)
    return artifact


def changed_keys(before: Recipe, after: Recipe, overrides: dict) -> list[str]:
    """The dotted keys of `overrides` whose value differs between the two recipes (both resolved)."""
    old, new = before.to_dict(), after.to_dict()
    return [key for key in overrides if get_dotted(old, key) != get_dotted(new, key)]


def refuse_changes_to_earlier_stages(artifact: Artifact, before: Recipe, after: Recipe, stage: str,
                                     changed: list[str]) -> None:
    """A SculptError when the `changed` keys alter the options of a stage before `stage` that the version has run
    (done or skipped); a stage whose extra is not installed here cannot say, and is not checked."""
    for name in STAGE_NAMES[:STAGE_NAMES.index(stage)]:
        record = artifact.record(name)
        if record is None or record.status == "failed":
            continue
        try:
            module = load_stage(name)
        except StageNotApplicable:
            continue
        ran, asked = (module.options(StageContext(artifact, recipe, False)) for recipe in (before, after))
        if ran != asked:
            raise SculptError(
                f"{', '.join(changed)}: a setting of the {name} stage, which {artifact.path} ran before {stage}; "
                f"re-run `sculpt {name} {artifact.path}` with the same flags first (then the stages after it), "
                f"or make a new version with `sculpt run`")


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
