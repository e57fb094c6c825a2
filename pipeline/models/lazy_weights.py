"""A source model whose weights stay on disk until a stage needs them, one decoder layer at a time.

A model too big for memory (Qwen2-7B is 15 GB in bf16) is built as a skeleton with accelerate's
`init_empty_weights` (every parameter on the meta device, buffers such as RoPE tables real), and its
tensors are read from the safetensors checkpoint with `safe_open` (memory-mapped) only inside
`materialised(...)`: the named modules get their tensors on the compute device, in the model's dtype,
and give them back to the meta device on exit. The checkpoint file is mapped only while a module is
being read, so its pages do not stay in the process's resident memory.

Which models stream is decided by `stream_source` (the environment variable `SCULPT_STREAM_WEIGHTS`:
`auto`, the default, streams a safetensors checkpoint whose weights would take more than a quarter of
this machine's memory in the requested dtype; `always`, `never`).
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..errors import SculptError
from .checkpoint_files import INDEX_FILE, SINGLE_FILE

STREAM_ENV = "SCULPT_STREAM_WEIGHTS"
STREAM_MODES = ("auto", "always", "never")
AUTO_FRACTION = 0.25  # auto streams a model whose weights exceed this fraction of physical memory
_ATTRIBUTE = "_sculpt_lazy_weights"  # where the skeleton keeps its LazyWeights


def stream_mode() -> str:
    mode = os.environ.get(STREAM_ENV, "auto").strip().lower() or "auto"
    if mode not in STREAM_MODES:
        raise SculptError(f"{STREAM_ENV}={mode!r} is not one of {', '.join(STREAM_MODES)}: unset it, or set "
                          f"`auto` (stream models larger than {AUTO_FRACTION:.0%} of memory), `always` or `never`")
    return mode


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def checkpoint_files(directory: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of a Hugging Face checkpoint directory (single file or sharded)."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return {name: single for name in handle.keys()}  # noqa: SIM118  (no __iter__)
    raise SculptError(f"{directory} has no {SINGLE_FILE} or {INDEX_FILE}: streaming reads safetensors checkpoints "
                      f"only; convert it (save_pretrained writes safetensors), or set {STREAM_ENV}=never")


def stored_parameters(directory: Path) -> int:
    """How many numbers the checkpoint's tensors hold (read from the headers only)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(set(checkpoint_files(directory).values())):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open has keys(), no __iter__)
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def stream_source(directory: Path, dtype: torch.dtype) -> bool:
    """Whether to load the checkpoint in `directory` lazily (see the module's docstring)."""
    mode = stream_mode()
    if mode != "auto":
        return mode == "always"
    directory = Path(directory)
    if not ((directory / INDEX_FILE).is_file() or (directory / SINGLE_FILE).is_file()):
        return False  # nothing to stream from: the in-memory loader reads whatever format it is
    element = torch.empty(0, dtype=dtype).element_size()
    return stored_parameters(directory) * element > AUTO_FRACTION * physical_memory()


@dataclass
class LazyWeights:
    """The tensors of a skeleton model, read from its safetensors checkpoint on demand."""

    directory: Path
    device: torch.device
    dtype: torch.dtype
    files: dict[str, Path]  # checkpoint tensor name -> file
    keys: dict[str, str]  # model tensor name -> checkpoint tensor name (tied weights read their source)
    held: dict[str, int] = field(default_factory=dict)  # module prefix -> how many materialised() hold it

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor of the model by its model name, read from disk (as stored: not cast, on the CPU)."""
        from safetensors import safe_open

        key = self.key(name)
        with safe_open(self.files[key], framework="pt", device="cpu") as handle:
            return handle.get_tensor(key)

    def key(self, name: str) -> str:
        if name not in self.keys:
            raise KeyError(f"{name} is not a tensor of this model")
        return self.keys[name]


def lazy_weights(model: nn.Module) -> LazyWeights | None:
    """The model's LazyWeights when it is a streamed skeleton, else None."""
    return getattr(model, _ATTRIBUTE, None)


def is_streamed(model: nn.Module) -> bool:
    return lazy_weights(model) is not None


def load_skeleton(directory: Path, config, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
    """A model of `config` with every weight on the meta device, its tensors to be read from `directory`."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    with init_empty_weights():  # buffers (RoPE tables) are computed for real, parameters are not allocated
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    device = torch.device(device)
    for name, buffer in list(model.named_buffers()):
        if buffer.device != device:
            set_module_tensor_to_device(model, name, device, value=buffer)
    files = checkpoint_files(directory)
    tied = dict(getattr(model, "_tied_weights_keys", None) or {}) if getattr(config, "tie_word_embeddings", False) \
        else {}
    keys = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        source = name if name in files else tied.get(name)
        if source not in files:
            raise SculptError(f"the checkpoint in {directory} has no tensor {name!r}, which the "
                              f"{config.model_type} model needs: streaming reads the checkpoint's tensor names "
                              f"as they are; load it in memory instead ({STREAM_ENV}=never)")
        keys[name] = source
    setattr(model, _ATTRIBUTE, LazyWeights(directory, device, dtype, files, keys))
    return model


def _module_names(model: nn.Module, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) in `model` of `module`, or of the parts of a wrapper around model modules (an adapter's
    soft-capped head wraps the model's lm_head)."""
    names = {id(candidate): name for name, candidate in model.named_modules(remove_duplicate=False)}
    if id(module) in names:
        return [(names[id(module)], module)]
    parts = [(names[id(child)], child) for child in module.children() if id(child) in names]
    if not parts:
        raise ValueError(f"this {type(module).__name__} is not part of the streamed model")
    return parts


def _direct_parameters(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters(remove_duplicate=False)]


@contextmanager
def materialised(model: nn.Module, modules: Iterable[nn.Module]) -> Iterator[None]:
    """Inside: the parameters of `modules` (parts of the streamed `model`) hold their checkpoint tensors on the
    compute device in the model's dtype; on exit they go back to the meta device (unless an enclosing
    `materialised` of the same module still holds them). A model that is not streamed passes through."""
    lazy = lazy_weights(model)
    if lazy is None:
        yield
        return
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open

    named = [part for module in modules for part in _module_names(model, module)]
    prefixes = [prefix for prefix, _ in named]
    loaded = {prefix: _direct_parameters(module, prefix) for prefix, module in named if not lazy.held.get(prefix)}
    for prefix in prefixes:
        lazy.held[prefix] = lazy.held.get(prefix, 0) + 1
    try:
        with ExitStack() as files, torch.no_grad():
            handles = {}
            for name in (name for names in loaded.values() for name in names):
                key = lazy.key(name)
                file = lazy.files[key]
                if file not in handles:
                    handles[file] = files.enter_context(safe_open(file, framework="pt", device="cpu"))
                value = handles[file].get_tensor(key).to(lazy.dtype)
                set_module_tensor_to_device(model, name, lazy.device, value=value)
        yield
    finally:
        for prefix in prefixes:
            lazy.held[prefix] -= 1
        for prefix, names in loaded.items():
            if not lazy.held[prefix]:
                for name in names:
                    set_module_tensor_to_device(model, name, "meta")
