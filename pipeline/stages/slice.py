"""slice: physically cut the source model to the searched architecture and save it.

The architecture is `reform/arch.json` when reform ran (it may add output biases), else
`search/arch.json`; then the search's and reform's weights are applied, in that order.

Writes `slice/model/`: a complete Hugging Face checkpoint (safetensors, config with
`auto_map`, generation config, tokenizer, and the modeling code), loadable with
`AutoModelForCausalLM.from_pretrained` after `import pipeline`, or with
`trust_remote_code=True` where llm-sculpt is not installed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import SculptError
from ..models.slicing import slice_model
from ..models.spec import ArchSpec, decoder_parameters, total_parameters
from .context import StageContext

NAME = "slice"
WEIGHT_FILES = ("search/weights.safetensors", "reform/weights.safetensors")  # applied in this order
REFORM_ARCH = "reform/arch.json"  # when reform ran, the architecture from there on (e.g. with output biases)


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("search")
    files = ["search/arch.json"]
    if recorded_output(ctx, REFORM_ARCH):
        _require_current_reform(ctx)
        files.append(REFORM_ARCH)
    files += [f for f in WEIGHT_FILES if recorded_output(ctx, f)]
    return files


def options(ctx: StageContext) -> dict:
    return {"model": ctx.model_options()}


def run(ctx: StageContext) -> None:
    files = inputs(ctx)
    weights = [f for f in files if f.endswith(".safetensors")]
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=files) as st:
        arch = REFORM_ARCH if REFORM_ARCH in files else "search/arch.json"
        spec = ArchSpec.from_json((ctx.artifact.path / arch).read_text())
        loaded = ctx.source()
        model = slice_model(loaded.model, spec)
        for name in weights:
            apply_weights(model, load_file(ctx.artifact.path / name), name)
        target = st.dir / "model"
        model.save_pretrained(target)
        loaded.tokenizer.save_pretrained(target)
        params = sum(p.numel() for p in model.parameters())
        if params != total_parameters(spec):
            raise RuntimeError(f"sliced model has {params} parameters, the spec predicts {total_parameters(spec)}")
        st.metrics.update(total_params=params, decoder_params=decoder_parameters(spec),
                          model_bytes=_bytes(target), weights_applied=weights)


def apply_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], origin: str) -> None:
    """Overwrite named parameters of the sliced model; names and shapes must match exactly."""
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params:
            raise SculptError(f"{origin} holds {name}, which the sliced model lacks: re-run search and reform together")
        if params[name].shape != tensor.shape:
            raise SculptError(f"{origin}: {name} has shape {tuple(tensor.shape)}, the sliced model "
                              f"{tuple(params[name].shape)}: re-run search and reform together")
        with torch.no_grad():
            params[name].copy_(tensor)


def recorded_output(ctx: StageContext, relative: str) -> bool:
    """True when the stage that writes `relative` is done and recorded that file."""
    record = ctx.artifact.record(relative.split("/")[0])
    return record is not None and record.status == "done" and relative in record.outputs


def _require_current_reform(ctx: StageContext) -> None:
    """Reform's files must come from the search result that is there now."""
    reform, search = ctx.artifact.record("reform"), ctx.artifact.record("search")
    made_from = {rel: sha for rel, sha in reform.inputs.items() if rel.startswith("search/")}
    if any(rel not in search.outputs or search.outputs[rel].sha256 != sha for rel, sha in made_from.items()):
        raise SculptError(f"reform in {ctx.artifact.path} was made from an earlier search result: "
                          "re-run reform (`sculpt reform ARTIFACT`) before slicing")


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
