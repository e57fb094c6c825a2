"""validate: measure the sculpted model against its source.

Perplexity on the evaluation split (the papers' protocol), parameters and checkpoint
size, before and after. Writes `validate/report.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from validators.perplexity import perplexity
from validators.runners import TorchRunner

from ..data import evaluation_ids, load_corpus
from .context import StageContext

NAME = "validate"


def options(ctx: StageContext) -> dict:
    section = ctx.recipe.validate_
    corpus = load_corpus(ctx.recipe.data.evaluation, "evaluation", ctx.data_dir)
    return {"evaluation": {"corpus": corpus.name, "sha256": corpus.sha256}, **section.model_dump(mode="json"),
            "model": ctx.model_options()}


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("slice")
    return ["slice/model"]


def run(ctx: StageContext) -> None:
    section = ctx.recipe.validate_
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=inputs(ctx)) as st:
        corpus = load_corpus(ctx.recipe.data.evaluation, "evaluation", ctx.data_dir)
        loaded = ctx.source()
        ids = evaluation_ids(loaded.tokenizer, corpus, section.seq_len)
        model_dir = ctx.artifact.path / "slice" / "model"
        sculpted = AutoModelForCausalLM.from_pretrained(model_dir, dtype=loaded.model.dtype)
        sculpted = sculpted.to(loaded.model.device).eval()

        def measure(model, label: str) -> dict:
            ctx.say(f"  perplexity of the {label} model on {corpus.name} ({corpus.split})")
            result = perplexity(TorchRunner(model), ids, section.seq_len, section.max_windows,
                                ctx.recipe.data.batch_size, ctx.progress)
            return result.as_dict()

        report = {"evaluation": corpus.provenance(), "sculpted": {
            "perplexity": measure(sculpted, "sculpted"),
            "params": sum(p.numel() for p in sculpted.parameters()),
            "checkpoint_bytes": _weights_bytes(model_dir),
        }}
        if section.compare_source:
            report["source"] = {
                "perplexity": measure(loaded.model, "source"),
                "params": sum(p.numel() for p in loaded.model.parameters()),
                "checkpoint_bytes": _weights_bytes(loaded.checkpoint_dir) if loaded.checkpoint_dir else None,
            }
        (st.dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        st.metrics.update(_headline(report))


def _headline(report: dict) -> dict:
    sculpted = report["sculpted"]
    metrics = {"ppl": sculpted["perplexity"]["ppl"], "params": sculpted["params"],
               "checkpoint_bytes": sculpted["checkpoint_bytes"], "eval_tokens": sculpted["perplexity"]["tokens"]}
    source = report.get("source")
    if source:
        metrics.update(ppl_source=source["perplexity"]["ppl"], params_source=source["params"],
                       checkpoint_bytes_source=source["checkpoint_bytes"],
                       ppl_increase_pct=100 * (metrics["ppl"] / source["perplexity"]["ppl"] - 1))
    return metrics


def _weights_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))
