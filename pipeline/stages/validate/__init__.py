"""validate: measure the sculpted model on every backend available for the artifact, compare it
with its source (and optionally a baseline artifact), and apply the recipe's gates.

Per backend (torch always; ONNX Runtime when the export stage ran; TensorRT when the build stage
made an engine): perplexity on the evaluation split, prefill latency, decode tokens/s, peak
memory, size on disk; parity of each backend with torch on fixed prompts. The dense source is
measured with torch; its perplexity, parameters and size may come from the cache (`source_cache`),
its timings and memory never do. The source and every backend of the sculpted model are timed
side by side, in the same rounds of this run, and each speed-up is the median of the per-round
ratios with its spread (`measure.time_side_by_side`, `pipeline.measures.speedup`).
Writes `validate/report.json`, `report.md` and PNG charts; the manifest records the headline
metrics and the gates' verdict. A failed gate does not fail the stage (its measurements are
valid): `pipeline.workflow` turns the recorded verdict into exit status 3; a speed gate that the
run was too noisy to decide counts as failed or as a warning, as `validate.on_undecidable` says.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path

from validators.backends import ModelFiles, open_runner, resolve_backends
from validators.gates import QUANTIZED_GATES, check_baseline, check_gates
from validators.parity import (
    compare_answers,
    compare_runners,
    prompt_ids,
    reference_answers,
)

from ...artifacts.manifest import StageRecord, to_jsonable
from ...data import evaluation_ids, load_corpus
from ...errors import SculptError
from ...measures.runners import TorchRunner
from ...models.lazy_weights import is_streamed, stored_parameters
from ...models.loading import describe_source
from ...paths import sha256_file
from ...targets import BACKEND_NAMES
from ..context import StageContext, whole_model_problem
from . import source_cache
from .baseline import Baseline, comparability_problem, load_baseline
from .charts import write_charts
from .measure import (
    Workload,
    measure_backend,
    memory,
    parameter_count,
    speed_block,
    time_side_by_side,
    timings,
    weights_bytes,
)
from .report import (
    MEASURED_KEYS,
    REPORT_SCHEMA_VERSION,
    build_report,
    headline_metrics,
    markdown,
    verdict_metrics,
)
from .streamed_source import streamed_perplexity

NAME = "validate"
REPORT = "report.json"
GATE_KEYS = {"gates", "quantized", "baseline", "baseline_tolerance", "baseline_speed_tolerance", "on_undecidable"}
SOURCE, SCULPTED = "source", "sculpted"  # the labels of the timed models


def measure_options(ctx: StageContext) -> dict:
    """What the measurements depend on (changing a gate or the baseline re-uses them)."""
    section = ctx.recipe.validate_
    corpus = load_corpus(ctx.recipe.data.evaluation, "evaluation", ctx.data_dir)
    return {"evaluation": {"corpus": corpus.name, "sha256": corpus.sha256},
            **section.model_dump(mode="json", exclude=GATE_KEYS), "batch_size": ctx.recipe.data.batch_size,
            "model": ctx.model_options()}


def options(ctx: StageContext) -> dict:
    section = ctx.recipe.validate_
    baseline = None
    if section.baseline:
        found = load_baseline(section.baseline)
        baseline = {**found.as_dict(), "tolerance_pct": section.baseline_tolerance,
                    "speed_tolerance_pct": section.baseline_speed_tolerance}
    return {"measure": measure_options(ctx), "gates": section.gates.active(),
            "quantized_gates": section.quantized.model_dump(), "baseline": baseline,
            "on_undecidable": section.on_undecidable}


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("slice")
    files = ["slice/model"]
    wanted = ctx.recipe.validate_.backends
    for stage, backend in (("export", "onnxruntime"), ("build", "tensorrt")):
        if _done(ctx, stage) and (wanted == "auto" or backend in wanted):
            files.append(stage)
    return files


def run(ctx: StageContext) -> None:
    section = ctx.recipe.validate_
    opts, files = options(ctx), inputs(ctx)
    baseline = load_baseline(section.baseline) if section.baseline else None
    if baseline is not None and (problem := comparability_problem(opts["measure"], baseline)):
        raise SculptError(problem)
    previous = ctx.artifact.record(NAME)
    with ctx.artifact.stage(NAME, options=opts, inputs=files) as st:
        measured = _previous_measurements(ctx, previous, opts, st.inputs)
        if measured is None:
            measured = measure_all(ctx)
        else:
            ctx.say("  measurements reused from the previous validate run: only gates or the baseline changed")
        metrics = headline_metrics(measured)
        results = check_gates(metrics, active_gates(section, metrics))
        compared = None
        if baseline is not None:
            results += check_baseline(metrics, baseline.metrics, str(baseline.path), section.baseline_tolerance,
                                      section.baseline_speed_tolerance)
            compared = _baseline_block(baseline, metrics, section)
        report = to_jsonable(build_report(measured, metrics, results, compared, ctx.artifact.version,
                                          section.on_undecidable), "report")
        charts = write_charts(report, st.dir)
        (st.dir / REPORT).write_text(json.dumps(report, indent=1) + "\n")
        (st.dir / "report.md").write_text(markdown(report, charts))
        st.metrics.update(verdict_metrics(metrics, results, compared, section.on_undecidable))
        for result in results:
            warning = "warning: " if result.status == "undecidable" and section.on_undecidable == "warn" else ""
            ctx.say(f"  {warning}gate {result.line()}")


def active_gates(section, metrics: dict) -> dict:
    """The recipe's gates, plus the quantized gates (`validate.quantized`) when a backend runs quantized weights."""
    gates = section.gates.active()
    if metrics.get("quantized_backends"):
        gates.update({QUANTIZED_GATES[key]: value for key, value in section.quantized.model_dump().items()})
    return gates


def model_files(ctx: StageContext) -> ModelFiles:
    """The sculpted model's files for each backend: the checkpoint, the export, the build (when done)."""
    path = ctx.artifact.path
    return ModelFiles(checkpoint=path / "slice" / "model", export=path / "export" if _done(ctx, "export") else None,
                      build=path / "build" if _done(ctx, "build") else None, dtype=ctx.recipe.model.dtype,
                      device=ctx.recipe.model.device)


def measure_all(ctx: StageContext) -> dict:
    """Every measurement of the report: the sculpted model on each backend, parity, the source, and the
    timings of all of them side by side.

    A sculpted model too big to hold whole next to another (`whole_model_problem`: the rule that streams a
    source) is measured one backend at a time instead: each runner is opened, measured and closed before the
    next, parity compares each backend with torch's recorded answers, ONNX Runtime (about twice an fp16 graph's
    weights on a CPU) is not opened, and nothing is timed side by side; `skipped` in the report says what was
    left out and why. A streamed source is scored layer by layer (`streamed_source`), never loaded whole."""
    from transformers import AutoTokenizer

    section = ctx.recipe.validate_
    work = Workload.from_recipe(section, ctx.recipe.data.batch_size)
    files = model_files(ctx)
    available, unavailable = resolve_backends(section.backends, files)
    skipped: dict[str, str] = {}
    too_big = whole_model_problem(files.checkpoint, ctx.recipe.model.dtype)
    if too_big is not None and "onnxruntime" in available:
        if section.backends != "auto":
            raise SculptError(f"validate.backends asks for onnxruntime, but {too_big}: drop it from the list")
        available.remove("onnxruntime")
        unavailable["onnxruntime"] = f"not available: {too_big}"
    for name, reason in unavailable.items():
        ctx.say(f"  {name}: {reason}")
    corpus = load_corpus(ctx.recipe.data.evaluation, "evaluation", ctx.data_dir)
    tokenizer = AutoTokenizer.from_pretrained(files.checkpoint)  # the source's tokenizer, saved by slice
    ids = evaluation_ids(tokenizer, corpus, section.seq_len)
    prompts = prompt_ids(tokenizer)
    if too_big is None:
        runners, sculpted, parity, params = _measure_together(available, unavailable, files, ids, prompts, work, ctx)
    else:
        ctx.say(f"  one backend at a time: {too_big}")
        runners = {}
        sculpted, parity, params, closed = _measure_one_at_a_time(available, files, ids, prompts, work, ctx)
        unavailable.update(closed)
        skipped["timings"] = f"not taken: timing side by side holds every model at once, and {too_big}"
    scored = sculpted["torch"]["perplexity"]
    states = {name: "measured" if name in sculpted else unavailable[name] for name in BACKEND_NAMES
              if name in sculpted or name in unavailable}
    source = measure_source(ctx, ids, work, skipped) if section.compare_source else None
    streamed_source = section.compare_source and is_streamed(ctx.source().model)
    speed = None
    if work.latency and "timings" not in skipped:
        timed = {} if not source or streamed_source else {f"{SOURCE}/torch": TorchRunner(ctx.source().model)}
        if source and streamed_source:
            skipped["source timings"] = "not taken: the source is streamed from disk (docs/scale.md)"
        timed.update({f"{SCULPTED}/{name}": runner for name, runner in runners.items()})  # sculpted/torch second
        samples = time_side_by_side(timed, work, ctx.say)
        for label, runner_samples in samples.items():
            model, backend = label.split("/")
            target = source["by_backend"][backend] if model == SOURCE else sculpted[backend]
            target.update(timings(runner_samples, work))
        compared = (f"{SOURCE}/torch", f"{SCULPTED}/torch") if f"{SOURCE}/torch" in timed else None
        speed = speed_block(samples, work, compared)
    for what, why in skipped.items():
        ctx.say(f"  {what}: {why}")
    return {
        "evaluation": {**corpus.provenance(), "seq_len": section.seq_len, "max_windows": section.max_windows,
                       "windows": scored["windows"], "tokens": scored["tokens"]},
        "workload": work.as_dict(),
        "backends": states,
        "sculpted": {"params": params, "checkpoint_bytes": weights_bytes(files.checkpoint), "by_backend": sculpted},
        "source": source,
        "parity": parity,
        "speed": speed,
        "skipped": skipped or None,
    }


def _measure_together(available: list[str], unavailable: dict[str, str], files: ModelFiles, ids, prompts,
                      work: Workload, ctx: StageContext) -> tuple[dict, dict, dict, int]:
    """Every backend opened at once, measured (perplexity, peak memory, size) and compared with torch; the
    runners stay open for the side-by-side timings. A TensorRT engine whose profiles cannot take the workload
    joins `unavailable` (or, with an explicit backend list, stops the stage).
    Returns (runners, measurements by backend, parity by backend, torch's parameter count)."""
    section = ctx.recipe.validate_
    runners = {name: open_runner(name, files) for name in available}
    if "tensorrt" in runners and (problem := runners["tensorrt"].workload_problem(**work.engine_needs)):
        if section.backends != "auto":
            raise SculptError(problem)
        del runners["tensorrt"]
        unavailable["tensorrt"] = f"not available: {problem}"
        ctx.say(f"  tensorrt: {unavailable['tensorrt']}")
    sculpted = {name: measure_backend(runner, files, ids, work, ctx.say, ctx.progress, SCULPTED)
                for name, runner in runners.items()}
    for name, runner in runners.items():
        weights = getattr(getattr(runner, "io", None), "quantized", None)  # an int4/int8 graph (exporters/quantize.py)
        if weights:
            sculpted[name]["quantized"] = weights
    parity = {name: compare_runners(runners["torch"], runner, prompts, section.parity_new_tokens)
              for name, runner in runners.items() if name != "torch"}
    return runners, sculpted, parity, parameter_count(runners["torch"].model)


def _measure_one_at_a_time(available: list[str], files: ModelFiles, ids, prompts, work: Workload,
                           ctx: StageContext) -> tuple[dict, dict, int, dict]:
    """Each backend opened, measured (perplexity, parity against torch's recorded answers, size) and closed
    before the next; its peak memory probe (a fresh process loading the model) only once it is closed.
    Returns (measurements by backend, parity by backend, torch's parameter count, {backend: why not measured})."""
    section = ctx.recipe.validate_
    sculpted, parity, closed = {}, {}, {}
    answers, params = None, 0
    for name in ["torch", *(n for n in available if n != "torch")]:
        runner = open_runner(name, files)
        if name == "tensorrt" and (problem := runner.workload_problem(**work.engine_needs)):
            if section.backends != "auto":
                raise SculptError(problem)
            closed[name] = f"not available: {problem}"
            del runner
            continue
        sculpted[name] = measure_backend(runner, files, ids, replace(work, memory=False), ctx.say, ctx.progress,
                                         SCULPTED)
        weights = getattr(getattr(runner, "io", None), "quantized", None)
        if weights:
            sculpted[name]["quantized"] = weights
        if name == "torch":
            params = parameter_count(runner.model)
            answers = reference_answers(runner, prompts, section.parity_new_tokens)
        else:
            parity[name] = compare_answers(answers, runner, prompts, section.parity_new_tokens)
        del runner
        gc.collect()  # the model goes before the next one, or the memory probe, is loaded
        if work.memory:
            sculpted[name]["memory"] = memory(name, files, work, ctx.say, SCULPTED)
    return sculpted, parity, params, closed


def measure_source(ctx: StageContext, ids, work: Workload, skipped: dict[str, str] | None = None) -> dict:
    """The dense source with torch: perplexity, parameters and size from the cache when the key matches (else
    measured and cached), peak memory measured now. Its timings are taken with the sculpted model's.

    A source streamed from disk is scored layer by layer (`streamed_perplexity`), its parameters counted from its
    checkpoint's headers; its peak memory (a process holding it whole) is not measured, and `skipped` says so."""
    evaluation = ctx.recipe.data.evaluation
    corpus = load_corpus(evaluation, "evaluation", ctx.data_dir)
    loaded = ctx.source()
    streamed = is_streamed(loaded.model)
    model_key = {"dtype": ctx.recipe.model.dtype, "device": ctx.recipe.model.device}
    if streamed:
        model_key["streamed"] = True  # summed layer by layer: the last digits may differ from a whole-model run
    key = source_cache.cache_key(_source_fingerprint(ctx), {"corpus": corpus.name, "sha256": corpus.sha256},
                                 work.perplexity_settings, model_key)
    cached = source_cache.load(key) if ctx.recipe.validate_.cache_source else None
    if cached is not None:
        ctx.say(f"  source: perplexity, parameters and size from the cache ({cached['cache']['file']})")
        measured = cached
    elif streamed:
        ctx.say(f"  {SOURCE} [torch]: perplexity, streamed from disk one decoder layer at a time")
        scored = streamed_perplexity(loaded.model, ids, work.seq_len, work.max_windows, work.batch_size, ctx.progress)
        size = weights_bytes(loaded.checkpoint_dir)
        measured = {"params": stored_parameters(loaded.checkpoint_dir), "checkpoint_bytes": size,
                    "by_backend": {"torch": {"perplexity": scored.as_dict(), "size_bytes": size, "streamed": True}}}
        measured["cache"] = {"file": str(source_cache.save(key, measured)), "from_cache": False}
    else:
        runner = TorchRunner(loaded.model)
        without_memory = replace(work, memory=False)  # measured below, on every run
        measured = {"params": parameter_count(loaded.model), "checkpoint_bytes": weights_bytes(loaded.checkpoint_dir),
                    "by_backend": {"torch": measure_backend(runner, _source_files(ctx), ids, without_memory, ctx.say,
                                                            ctx.progress, SOURCE)}}
        measured["cache"] = {"file": str(source_cache.save(key, measured)), "from_cache": False}
    if work.memory and streamed and skipped is not None:
        skipped["source memory"] = ("not measured: the source is streamed from disk, and measuring it means "
                                    "loading it whole (docs/scale.md)")
    elif work.memory:
        measured["by_backend"]["torch"]["memory"] = memory("torch", _source_files(ctx), work, ctx.say, SOURCE)
    return measured


def _source_files(ctx: StageContext) -> ModelFiles:
    return ModelFiles(checkpoint=ctx.source().checkpoint_dir, dtype=ctx.recipe.model.dtype,
                      device=ctx.recipe.model.device)


def _source_fingerprint(ctx: StageContext) -> str:
    source = ctx.artifact.manifest.source
    if source.sha256:
        return f"sha256:{source.sha256}"
    if source.kind == "dir":
        return source_cache.checkpoint_fingerprint(Path(describe_source(ctx.recipe.model.source)["path"]))
    return source_cache.checkpoint_fingerprint(ctx.source().checkpoint_dir)


def _previous_measurements(ctx: StageContext, previous: StageRecord | None, opts: dict,
                           input_hashes: dict[str, str]) -> dict | None:
    """The last run's measurements when only gates or the baseline changed since (same settings, same inputs)."""
    if previous is None or previous.status != "done" or previous.inputs != input_hashes:
        return None
    if previous.options.get("measure") != to_jsonable(opts["measure"], "options"):
        return None
    path = ctx.artifact.path / NAME / REPORT
    recorded = previous.outputs.get(f"{NAME}/{REPORT}")
    if recorded is None or not path.is_file() or sha256_file(path) != recorded.sha256:
        return None
    report = json.loads(path.read_text())
    if report.get("schema_version") != REPORT_SCHEMA_VERSION:
        return None  # an older report (e.g. timings of the source from the cache): measure again
    return {key: report.get(key) for key in MEASURED_KEYS}


def _baseline_block(baseline: Baseline, metrics: dict, section) -> dict:
    return {**baseline.as_dict(), "ppl": baseline.metrics["ppl"],
            "ppl_change_pct": 100 * (metrics["ppl"] / baseline.metrics["ppl"] - 1),
            "tolerance_pct": section.baseline_tolerance, "decode_speedup": baseline.metrics.get("decode_speedup"),
            "speed_tolerance_pct": section.baseline_speed_tolerance}


def _done(ctx: StageContext, stage: str) -> bool:
    record = ctx.artifact.record(stage)
    return record is not None and record.status == "done"
