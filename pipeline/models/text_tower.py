"""The text tower of a multimodal checkpoint, as a checkpoint of its text family (made once, cached).

Gemma 3 4B and larger ship as `Gemma3ForConditionalGeneration` (model_type `gemma3`): a vision
tower, a projector and a Gemma 3 language model. llm-sculpt prunes decoder LLMs, so it takes the
language model alone: the config's `text_config` (as transformers itself resolves it, defaults and
legacy RoPE keys included) and the language-model weights, renamed to the text family's names
(`gemma3_text`, `Gemma3ForCausalLM`). Which wrappers qualify and how their weights are named is
data in the family table (`families.TEXT_TOWERS`); this module only reads it.

The copy goes to `<cache root>/text-tower/<name>-<hash>` (the cache root of the dequantised GGUF
files), keyed by the sha256 of the config and weight files, so a checkpoint is split once. Only
safetensors checkpoints are read, and a tower whose weights are incomplete is an error, never a
model with random layers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..errors import SculptError
from ..paths import cache_root, sha256_file, write_directory_once
from .checkpoint_files import INDEX_FILE, shard_name, write_index
from .families import FAMILIES, TEXT_TOWERS, TextTower

_NOT_COPIED = {"config.json", INDEX_FILE}  # rewritten for the tower; weight files are rewritten too


def text_tower_of(directory: str | Path) -> TextTower | None:
    """The text-tower entry of the checkpoint in `directory`, or None when it is not a known multimodal model."""
    config = Path(directory) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as err:
        raise SculptError(f"cannot read {config}: {err}") from None
    return TEXT_TOWERS.get(model_type)


def text_tower_checkpoint(directory: str | Path, cache: str | Path | None = None) -> Path:
    """`directory` itself unless it holds a multimodal model listed in `families.TEXT_TOWERS`; then a
    checkpoint of its text tower alone (config, weights, tokenizer and generation files), made once under
    `cache` (default: the cache root's `text-tower` folder) and reused while the source files are unchanged."""
    directory = Path(directory)
    tower = text_tower_of(directory)
    if tower is None:
        return directory
    weights = _weight_files(directory)
    key = _source_key(directory, weights)
    target = Path(cache) if cache is not None else cache_root() / "text-tower"
    target = target / f"{directory.resolve().name}-{key[:16]}"
    if (target / "config.json").is_file():
        return target
    return write_directory_once(target, lambda staging: _write_tower(directory, tower, weights, staging))


def _weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise SculptError(f"{directory} lists weight files it does not hold: {', '.join(missing)}")
        return [directory / name for name in names]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    raise SculptError(f"{directory} holds no safetensors weights (model.safetensors or {INDEX_FILE}); "
                      "llm-sculpt takes a multimodal model's text tower from safetensors checkpoints only")


def _source_key(directory: Path, weights: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in (directory / "config.json", *weights):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _rename(name: str, tower: TextTower) -> str | None:
    for source, family in tower.renames:
        if name.startswith(source):
            return family + name[len(source):]
    return None


def _write_tower(directory: Path, tower: TextTower, weights: list[Path], out: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        wrapper = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise SculptError(f"cannot read the model config in {directory}: {err}") from None
    text = getattr(wrapper, tower.config_key, None)
    if text is None or getattr(text, "model_type", None) != tower.family:
        raise SculptError(f"{directory}: a {tower.model_type} config whose {tower.config_key} is not a "
                          f"{tower.family} config ({getattr(text, 'model_type', None)!r})")
    family = FAMILIES[tower.family]
    text.architectures = [f"{family.prefix}ForCausalLM"]
    # The wrapper ties its LM head to the language model's embeddings as its own config says.
    text.tie_word_embeddings = bool(getattr(wrapper, "tie_word_embeddings", text.tie_word_embeddings))
    if getattr(wrapper, "dtype", None) is not None:
        text.dtype = wrapper.dtype
    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(text).state_dict())
    if text.tie_word_embeddings:
        expected.discard("lm_head.weight")

    found: dict[str, str] = {}  # family name -> output file
    shards = []
    for number, path in enumerate(weights, 1):
        tensors = {}
        with safe_open(path, framework="pt") as file:
            for name in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                renamed = _rename(name, tower)
                if renamed is None or renamed not in expected:
                    continue
                if renamed in found or renamed in tensors:
                    raise SculptError(f"{directory}: two tensors of the checkpoint are the text tower's {renamed}")
                tensors[renamed] = file.get_tensor(name)
        if tensors:
            shards.append((number, tensors))
    missing = expected - {name for _, tensors in shards for name in tensors}
    if missing:
        raise SculptError(f"{directory}: the {tower.model_type} checkpoint lacks {len(missing)} weights of its "
                          f"{tower.family} text tower (e.g. {min(missing)}); is it complete?")

    names = [shard_name(i, len(shards)) for i in range(1, len(shards) + 1)]
    for name, (_, tensors) in zip(names, shards, strict=True):
        save_file(tensors, out / name, metadata={"format": "pt"})
        found.update(dict.fromkeys(tensors, name))
    if len(shards) > 1:
        size = sum(t.numel() * t.element_size() for _, tensors in shards for t in tensors.values())
        write_index(out, found, size)
    text.save_pretrained(out)
    weight_names = {path.name for path in weights}
    for path in directory.iterdir():  # tokenizer, generation config, chat template, licence
        if path.is_file() and path.name not in _NOT_COPIED | weight_names and not path.name.endswith(
                (".safetensors", ".bin", ".pt", ".pth")):
            shutil.copy2(path, out / path.name)
