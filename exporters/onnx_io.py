"""The I/O contract of an exported decoder graph: names, shapes, dynamic axes, and the
dummy-slot convention that keeps every dimension of every input at least 1.

Names follow optimum (`past_key_values.{i}.key` in, `present.{i}.key` out), where i is
the KV-cache index: only layers that keep attention have one, and each has its own KV
head count. The same description drives torch.export's dynamic shapes, the ONNX
Runtime feeds, TensorRT optimization profiles and the edge kit's trtexec shapes.

Dummy slot: TensorRT 10.3 is not known to accept a zero-length past, so a prompt is fed
with a past of length 1 whose single slot is masked out (attention_mask 0, zeros in the
cache). The slot stays in the cache, still masked, for every later step. It changes no
logit: a masked key gets exactly zero attention weight.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IO_FORMAT = "llm-sculpt/onnx-io"
IO_VERSION = 1
IO_FILE = "io.json"
DUMMY_SLOTS = 1  # masked cache slots in front of the first real token

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
# Symbolic dimension names as they appear in the graph and in profiles.
BATCH, SEQ, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"
# The two kinds of call a runner makes: a prompt after the dummy slot, one token after the cache. A TensorRT
# engine has one optimization profile for each, at these indices (exporters/trt_plan.py builds them in this
# order, validators/trt_runner.py selects them by it).
PREFILL, DECODE = "prefill", "decode"
PROFILES = (PREFILL, DECODE)


def past_names(index: int) -> tuple[str, str]:
    return f"past_key_values.{index}.key", f"past_key_values.{index}.value"


def present_names(index: int) -> tuple[str, str]:
    return f"present.{index}.key", f"present.{index}.value"


@dataclass(frozen=True)
class GraphIO:
    """Everything a runner or a builder needs to know about an exported graph's inputs and outputs."""

    kv_heads: tuple[int, ...]  # KV heads of each cache entry, in cache order
    head_dim: int
    vocab_size: int
    dtype: str  # "float32" | "float16": the dtype of the KV cache and the logits
    opset: int
    dummy_slots: int = DUMMY_SLOTS
    quantized: str | None = None  # "int4" | "int8": weight-only quantized MatMuls (exporters/quantize.py); None: not

    @classmethod
    def from_config(cls, config, dtype: str, opset: int) -> "GraphIO":
        """From a SculptedConfig: one cache entry per layer that keeps attention."""
        heads = tuple(config.sculpt_layers[pos]["num_kv_heads"] for pos in config.attention_layers)
        return cls(kv_heads=heads, head_dim=config.head_dim, vocab_size=config.vocab_size, dtype=dtype, opset=opset)

    # ---- names -----------------------------------------------------------------
    @property
    def num_cache_entries(self) -> int:
        return len(self.kv_heads)

    @property
    def past_inputs(self) -> list[str]:
        return [name for i in range(self.num_cache_entries) for name in past_names(i)]

    @property
    def present_outputs(self) -> list[str]:
        return [name for i in range(self.num_cache_entries) for name in present_names(i)]

    @property
    def input_names(self) -> list[str]:
        return [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *self.past_inputs]

    @property
    def output_names(self) -> list[str]:
        return [LOGITS, *self.present_outputs]

    def cache_heads(self, name: str) -> int:
        """KV heads of the cache entry a past/present tensor name belongs to."""
        return self.kv_heads[int(name.split(".")[-2])]

    # ---- shapes ----------------------------------------------------------------
    def input_shapes(self, batch: int, seq: int, past: int) -> dict[str, tuple[int, ...]]:
        """Concrete shape of every input for `seq` new tokens after `past` cached slots (dummy included)."""
        shapes = {INPUT_IDS: (batch, seq), ATTENTION_MASK: (batch, past + seq), POSITION_IDS: (batch, seq)}
        for name in self.past_inputs:
            shapes[name] = (batch, self.cache_heads(name), past, self.head_dim)
        return shapes

    # ---- feeds -----------------------------------------------------------------
    def prefill_feeds(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Inputs for a prompt [B, S]: positions 0..S-1 after `dummy_slots` masked, zeroed cache slots."""
        batch, seq = input_ids.shape
        slots = self.dummy_slots
        mask = np.ones((batch, slots + seq), dtype=np.int64)
        mask[:, :slots] = 0
        feeds = {INPUT_IDS: input_ids.astype(np.int64), ATTENTION_MASK: mask,
                 POSITION_IDS: np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()}
        for name in self.past_inputs:
            feeds[name] = np.zeros((batch, self.cache_heads(name), slots, self.head_dim), dtype=self.dtype)
        return feeds

    def decode_feeds(self, tokens: np.ndarray, mask: np.ndarray, presents: dict[str, np.ndarray]) -> dict:
        """Inputs for one step: `tokens` [B, 1], the grown `mask` [B, past + 1], last step's presents as the past."""
        seen = int(mask.shape[1]) - self.dummy_slots - 1  # real tokens already in the cache
        batch = tokens.shape[0]
        feeds = {INPUT_IDS: tokens.astype(np.int64), ATTENTION_MASK: mask,
                 POSITION_IDS: np.full((batch, 1), seen, dtype=np.int64)}
        for past, present in zip(self.past_inputs, self.present_outputs):
            feeds[past] = presents[present]
        return feeds

    # ---- files -----------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["kv_heads"] = list(self.kv_heads)
        return {"format": IO_FORMAT, "version": IO_VERSION, **data,
                "inputs": self.input_names, "outputs": self.output_names}

    def save(self, directory: Path) -> Path:
        path = Path(directory) / IO_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> "GraphIO":
        from pipeline.errors import SculptError

        path = Path(directory) / IO_FILE
        if not path.is_file():
            raise SculptError(f"{path} not found: pass a directory written by `sculpt export` (it holds model.onnx "
                              f"and {IO_FILE})")
        data = json.loads(path.read_text())
        if data.get("format") != IO_FORMAT or data.get("version") != IO_VERSION:
            raise SculptError(f"{path} is not an llm-sculpt ONNX I/O description of version {IO_VERSION}: "
                              "re-export the model with this llm-sculpt")
        return cls(kv_heads=tuple(data["kv_heads"]), head_dim=data["head_dim"], vocab_size=data["vocab_size"],
                   dtype=data["dtype"], opset=data["opset"], dummy_slots=data["dummy_slots"],
                   quantized=data.get("quantized"))
