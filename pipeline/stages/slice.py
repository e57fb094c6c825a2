"""slice: physically cut the source model to the searched architecture and save it.

The architecture is `reform/arch.json` when reform ran (it may add output biases), else
`search/arch.json`; then the search's and reform's weights are applied, in that order.

Writes `slice/model/`: a complete Hugging Face checkpoint (safetensors, config with `auto_map`, generation
config, tokenizer, and the modeling code; for a source streamed from disk the weights are one shard per piece,
embeddings, head and each decoder layer, with an index, written one layer at a time), loadable with
`AutoModelForCausalLM.from_pretrained` after `import pipeline`, or with
`trust_remote_code=True` where llm-sculpt is not installed.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import SculptError
from ..models.checkpoint_files import shard_name, write_index
from ..models.lazy_weights import is_streamed
from ..models.modeling_sculpted import SculptedForCausalLM
from ..models.slicing import sculpted_config, slice_model, sliced_pieces, source_dtype
from ..models.spec import ArchSpec, decoder_parameters, total_parameters
from .context import StageContext

NAME = "slice"
WEIGHT_FILES = ("search/weights.safetensors", "reform/weights.safetensors")  # applied in this order
REFORM_LAYER_FILES = "reform/weights-*.safetensors"  # a streamed reform's fixes, one file per layer, after the above
REFORM_ARCH = "reform/arch.json"  # when reform ran, the architecture from there on (e.g. with output biases)


def inputs(ctx: StageContext) -> list[str]:
    ctx.artifact.require("search")
    files = ["search/arch.json"]
    if recorded_output(ctx, REFORM_ARCH):
        _require_current_reform(ctx)
        files.append(REFORM_ARCH)
    files += [f for f in WEIGHT_FILES if recorded_output(ctx, f)]
    return files + _reform_layer_files(ctx)


def _reform_layer_files(ctx: StageContext) -> list[str]:
    """The reform stage's per-layer files (a source streamed from disk), in layer order."""
    record = ctx.artifact.record("reform")
    if record is None or record.status != "done":
        return []
    return sorted(rel for rel in record.outputs if fnmatch(rel, REFORM_LAYER_FILES))


def options(ctx: StageContext) -> dict:
    return {"model": ctx.model_options()}


def run(ctx: StageContext) -> None:
    files = inputs(ctx)
    weights = [f for f in files if f.endswith(".safetensors")]
    with ctx.artifact.stage(NAME, options=options(ctx), inputs=files) as st:
        arch = REFORM_ARCH if REFORM_ARCH in files else "search/arch.json"
        spec = ArchSpec.from_json((ctx.artifact.path / arch).read_text())
        loaded = ctx.source()
        target = st.dir / "model"
        if is_streamed(loaded.model):  # one layer in memory at a time, written shard by shard
            params = write_sliced(loaded.model, spec, target, [(ctx.artifact.path / f, f) for f in weights])
        else:
            model = slice_model(loaded.model, spec)
            for name in weights:
                apply_weights(model, load_file(ctx.artifact.path / name), name)
            model.save_pretrained(target)
            params = sum(p.numel() for p in model.parameters())
        loaded.tokenizer.save_pretrained(target)
        if params != total_parameters(spec):
            raise RuntimeError(f"sliced model has {params} parameters, the spec predicts {total_parameters(spec)}")
        st.metrics.update(total_params=params, decoder_params=decoder_parameters(spec),
                          model_bytes=_bytes(target), weights_applied=weights)


def write_sliced(source: torch.nn.Module, spec: ArchSpec, target: Path, weights: list[tuple[Path, str]]) -> int:
    """Slice a streamed `source` and save it as a sharded checkpoint, one piece (embeddings, head, each layer) in
    memory at a time: each piece gets the tensors of `weights` ((file, its name in the artifact), applied in
    order, as `apply_weights` does) and is written as its own safetensors shard; then the config, generation
    config and modeling code (what save_pretrained writes besides the weights) and the shards' index, which
    `from_pretrained` reads. Returns the number of parameters written."""
    from accelerate import init_empty_weights
    from safetensors import safe_open

    with init_empty_weights():  # the sculpted model's config and code, without its weights
        skeleton = SculptedForCausalLM(sculpted_config(source.config, spec)).to(source_dtype(source))
    expected = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()
                if not (name == "lm_head.weight" and spec.base.tie_word_embeddings)}
    target.mkdir(parents=True, exist_ok=True)
    skeleton.save_pretrained(target, state_dict={})  # config.json (auto_map), generation config, code files
    overrides: dict[str, tuple[Path, str]] = {}  # tensor name -> (file, artifact name) of its last override
    for path, origin in weights:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open has keys(), no __iter__)
                if name not in expected:
                    raise SculptError(f"{origin} holds {name}, which the sliced model lacks: re-run search and "
                                      "reform together")
                overrides[name] = (path, origin)
    pieces = len(spec.layers) + 2  # embeddings, head and every layer
    weight_map, total_bytes, params, written = {}, 0, 0, set()
    for number, (_, tensors) in enumerate(sliced_pieces(source, spec), start=1):
        for name in tensors:
            if name in overrides:
                path, origin = overrides[name]
                with safe_open(path, framework="pt") as handle:
                    value = handle.get_tensor(name)
                if tuple(value.shape) != tuple(tensors[name].shape):
                    raise SculptError(f"{origin}: {name} has shape {tuple(value.shape)}, the sliced model "
                                      f"{tuple(tensors[name].shape)}: re-run search and reform together")
                tensors[name] = value.to(tensors[name].dtype)  # as copy_ into the parameter casts it
        shard = shard_name(number, pieces)
        save_file({name: t.contiguous() for name, t in tensors.items()}, target / shard, metadata={"format": "pt"})
        for name, tensor in tensors.items():
            weight_map[name] = shard
            total_bytes += tensor.numel() * tensor.element_size()
            params += tensor.numel()
            written.add(name)
        del tensors
    if written != set(expected):
        raise RuntimeError(f"slicing produced a mismatched checkpoint: missing {sorted(set(expected) - written)}, "
                           f"unexpected {sorted(written - set(expected))}")
    write_index(target, weight_map, total_bytes)
    return params


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
