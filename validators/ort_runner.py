"""ONNX Runtime backend: scores, greedy generation with a KV cache, and latency, from an exported graph.

It feeds the graph exactly as TensorRT would be fed (see exporters/onnx_io.py): every
prompt starts after one masked dummy cache slot, so no input ever has a zero-length
dimension, and the cache it returns is passed back in as the next step's past.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from exporters.onnx_io import LOGITS, GraphIO
from pipeline.errors import SculptError

from .latency import DecodeResult, Timing, summarise, time_call

MODEL_FILE = "model.onnx"


class OrtRunner:
    """An exported decoder graph behind the `Runner` protocol, plus generation and latency."""

    name = "onnxruntime"

    def __init__(self, session, io: GraphIO) -> None:
        self.session = session
        self.io = io
        self._outputs = [o.name for o in session.get_outputs()]
        missing = set(io.output_names) - set(self._outputs)
        if missing:
            raise SculptError(f"the ONNX graph lacks outputs {sorted(missing)} its io.json promises: re-export it")

    @classmethod
    def from_export_dir(cls, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                        optimization: str = "all") -> "OrtRunner":
        """Open `path/model.onnx` (written by `sculpt export`) with `path/io.json`; CPU unless `providers` say."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise SculptError("the ONNX Runtime backend needs onnxruntime: pip install 'llm-sculpt[onnx]'") from None
        path = Path(path)
        io = GraphIO.load(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        session = ort.InferenceSession(str(path / MODEL_FILE), options, providers=providers or ["CPUExecutionProvider"])
        return cls(session, io)

    # ---- running -----------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def prefill(self, input_ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Run a prompt [B, S]; returns the outputs and the attention mask the cache now corresponds to."""
        feeds = self.io.prefill_feeds(input_ids)
        return self.run(feeds), feeds["attention_mask"]

    def step(self, tokens: np.ndarray, mask: np.ndarray, outputs: dict[str, np.ndarray]) -> tuple[dict, np.ndarray]:
        """One decode step: `tokens` [B, 1] after the cache in `outputs`; returns the new outputs and mask."""
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=1)
        return self.run(self.io.decode_feeds(tokens, mask, outputs)), mask

    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        outputs, _ = self.prefill(input_ids.cpu().numpy())
        return torch.from_numpy(outputs[LOGITS].astype(np.float32, copy=False))

    def generate(self, input_ids: torch.LongTensor, max_new_tokens: int) -> torch.LongTensor:
        """Greedy decoding through the KV cache: the prompt [B, S] followed by `max_new_tokens` tokens."""
        ids = input_ids.cpu().numpy().astype(np.int64)
        outputs, mask = self.prefill(ids)
        generated = [ids]
        for step in range(max_new_tokens):
            token = outputs[LOGITS][:, -1:].argmax(-1).astype(np.int64)
            generated.append(token)
            if step + 1 < max_new_tokens:
                outputs, mask = self.step(token, mask, outputs)
        return torch.from_numpy(np.concatenate(generated, axis=1))

    # ---- latency -------------------------------------------------------------------
    def _random_ids(self, batch: int, length: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, self.io.vocab_size, (batch, length), dtype=np.int64)

    def prefill_latency(self, seq_len: int, batch: int = 1, warmup: int = 1, repeats: int = 5) -> Timing:
        """Time to run a prompt of `seq_len` tokens, filling the KV cache (the graph scores every position)."""
        ids = self._random_ids(batch, seq_len)
        return time_call(lambda: self.prefill(ids), warmup, repeats)

    def decode_throughput(self, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32, warmup: int = 1,
                          repeats: int = 3) -> DecodeResult:
        """Greedy decoding with the KV cache, one token per step after an untimed prefill."""
        ids = self._random_ids(batch, prompt_len)
        samples: list[float] = []

        def decode_loop() -> None:
            outputs, mask = self.prefill(ids)
            start = time.perf_counter()
            for _ in range(new_tokens):
                token = outputs[LOGITS][:, -1:].argmax(-1).astype(np.int64)
                outputs, mask = self.step(token, mask, outputs)
            samples.append((time.perf_counter() - start) / new_tokens)

        for _ in range(warmup):
            decode_loop()
        samples.clear()
        for _ in range(repeats):
            decode_loop()
        step = summarise(samples)
        return DecodeResult(tokens_per_s=batch / step.median_s, step=step, batch=batch, prompt_len=prompt_len,
                            new_tokens=new_tokens)
