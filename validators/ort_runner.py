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
from pipeline.measures.latency import DecodeResult, Timing, summarise, time_call

MODEL_FILE = "model.onnx"


class OrtRunner:
    """An exported decoder graph behind the `MeasuredRunner` and `DecodingRunner` protocols."""

    name = "onnxruntime"

    def __init__(self, session, io: GraphIO, device: str = "cpu", io_binding: bool | None = None) -> None:
        self.session = session
        self.io = io
        self.device = device
        self.io_binding = device != "cpu" if io_binding is None else io_binding  # keep the cache on the device
        self._outputs = [o.name for o in session.get_outputs()]
        missing = set(io.output_names) - set(self._outputs)
        if missing:
            raise SculptError(f"the ONNX graph lacks outputs {sorted(missing)} its io.json promises: re-export it")

    @classmethod
    def from_export_dir(cls, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                        optimization: str = "all", device: str = "cpu") -> "OrtRunner":
        """Open `path/model.onnx` (written by `sculpt export`) with `path/io.json`.

        device "cpu" or "cuda[:N]" picks the execution provider (`providers` overrides it); on a GPU the KV
        cache stays on the device between steps (I/O binding), only the logits come back to the host.
        """
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
        providers = providers or execution_providers(device, ort.get_available_providers())
        session = ort.InferenceSession(str(path / MODEL_FILE), options, providers=providers)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if session.get_providers()[0] != wanted:
            raise SculptError(f"ONNX Runtime could not start {wanted} (it fell back to "
                              f"{session.get_providers()[0]}): check the CUDA/cuDNN libraries onnxruntime-gpu needs")
        return cls(session, io, device)

    # ---- running -----------------------------------------------------------------
    def run(self, feeds: dict, logits_on_host: bool = True) -> dict:
        """One call of the graph. On a GPU the presents stay there as OrtValues (fed back as the next past)."""
        if not self.io_binding:
            return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        kind, _, index = self.device.partition(":")
        for name in self._outputs:
            host = name == LOGITS and logits_on_host
            binding.bind_output(name, "cpu" if host else kind, 0 if host else int(index or 0))
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(self._outputs, binding.get_outputs()))
        if logits_on_host:
            outputs[LOGITS] = outputs[LOGITS].numpy()
        return outputs

    def prefill(self, input_ids: np.ndarray, logits_on_host: bool = True) -> tuple[dict, np.ndarray]:
        """Run a prompt [B, S]; returns the outputs and the attention mask the cache now corresponds to."""
        feeds = self.io.prefill_feeds(input_ids)
        return self.run(feeds, logits_on_host), feeds["attention_mask"]

    def step(self, tokens: np.ndarray, mask: np.ndarray, outputs: dict[str, np.ndarray]) -> tuple[dict, np.ndarray]:
        """One decode step: `tokens` [B, 1] after the cache in `outputs`; returns the new outputs and mask."""
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=1)
        return self.run(self.io.decode_feeds(tokens, mask, outputs)), mask

    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        outputs, _ = self.prefill(input_ids.cpu().numpy())
        return torch.from_numpy(outputs[LOGITS].astype(np.float32, copy=False))

    def generate(self, input_ids: torch.LongTensor, max_new_tokens: int) -> torch.LongTensor:
        """Greedy decoding through the KV cache: the prompt [B, S] followed by `max_new_tokens` tokens."""
        tokens = self.greedy_logits(input_ids, max_new_tokens).argmax(-1)  # the tokens greedy_logits fed back
        return torch.cat([input_ids.cpu().long(), tokens], dim=1)

    def greedy_logits(self, input_ids: torch.LongTensor, new_tokens: int) -> torch.Tensor:
        """[B, new_tokens, V] float32: the last position's logits after the prompt, then after each greedy token
        fed back through the KV cache (`DecodingRunner`, what the export stage's parity check compares)."""
        outputs, mask = self.prefill(input_ids.cpu().numpy())
        steps = []
        for step in range(new_tokens):
            steps.append(torch.from_numpy(outputs[LOGITS][:, -1].astype(np.float32)))
            if step + 1 < new_tokens:
                token = steps[-1].argmax(-1)
                outputs, mask = self.step(token[:, None].numpy().astype(np.int64), mask, outputs)
        return torch.stack(steps, dim=1)

    # ---- latency -------------------------------------------------------------------
    def _random_ids(self, batch: int, length: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, self.io.vocab_size, (batch, length), dtype=np.int64)

    def prefill_latency(self, seq_len: int, batch: int = 1, warmup: int = 1, repeats: int = 5) -> Timing:
        """Time to run a prompt of `seq_len` tokens, filling the KV cache (the graph scores every position;
        on a GPU the logits stay there, as torch's do)."""
        ids = self._random_ids(batch, seq_len)
        return time_call(lambda: self.prefill(ids, logits_on_host=False), warmup, repeats)

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


def execution_providers(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for a torch-style device name, or a SculptError saying what to install."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise SculptError(f"device {device!r} is not one ONNX Runtime runs on here: use cpu or cuda[:N]")
    if "CUDAExecutionProvider" not in available:
        raise SculptError(f"ONNX Runtime here has no CUDA provider (it has {', '.join(available)}): "
                          "pip uninstall onnxruntime && pip install onnxruntime-gpu")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
