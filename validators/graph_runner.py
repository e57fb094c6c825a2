"""An exported decoder graph as a runner: scores, greedy decoding through the KV cache, latency.

The ONNX Runtime runner (`ort_runner`) and the TensorRT runner (`trt_runner`) feed the same
graph the same way (exporters/onnx_io.py): a prompt starts after one masked dummy cache slot,
and the cache a call returns is passed back in as the next step's past. This base class is that
loop, written once; a backend supplies `_execute`, one call of the graph:

    _execute(feeds, profile, logits_on_host) -> {output name: value}

`feeds` holds host numpy arrays (ids, mask, positions, the prefill's zero cache) and, while
decoding, the previous call's presents as that backend returned them (numpy arrays, OrtValues,
CUDA tensors), which it must accept back as inputs. `profile` is `onnx_io.PREFILL` or `DECODE`:
which kind of call this is (TensorRT selects its optimization profile by it). The logits come
back as a host numpy array when `logits_on_host`, else wherever the backend keeps them.
"""

from __future__ import annotations

import numpy as np
import torch

from exporters.onnx_io import ATTENTION_MASK, DECODE, LOGITS, PREFILL, GraphIO
from pipeline.measures.latency import DecodeResult, Timing, time_call, time_decode


class GraphRunner:
    """The `MeasuredRunner` and `DecodingRunner` protocols over one `_execute` of an exported graph."""

    name: str
    io: GraphIO

    def _execute(self, feeds: dict, profile: str, logits_on_host: bool) -> dict:
        raise NotImplementedError

    # ---- the cache loop ------------------------------------------------------------
    def prefill(self, input_ids: np.ndarray, logits_on_host: bool = True) -> tuple[dict, np.ndarray]:
        """Run a prompt [B, S]; returns the outputs and the attention mask the cache now corresponds to."""
        feeds = self.io.prefill_feeds(input_ids)
        return self._execute(feeds, PREFILL, logits_on_host), feeds[ATTENTION_MASK]

    def step(self, tokens: np.ndarray, mask: np.ndarray, outputs: dict) -> tuple[dict, np.ndarray]:
        """One decode step: `tokens` [B, 1] after the cache in `outputs`; returns the new outputs and mask."""
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=1)
        return self._execute(self.io.decode_feeds(tokens, mask, outputs), DECODE, True), mask

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
        on a GPU the logits stay there, as torch's do). `_execute` returns when the call is done."""
        ids = self._random_ids(batch, seq_len)
        return time_call(lambda: self.prefill(ids, logits_on_host=False), warmup, repeats)

    def decode_throughput(self, batch: int = 1, prompt_len: int = 32, new_tokens: int = 32, warmup: int = 1,
                          repeats: int = 3) -> DecodeResult:
        """Greedy decoding with the KV cache, one token per step after an untimed prefill."""
        ids = self._random_ids(batch, prompt_len)

        def step(state: tuple[dict, np.ndarray]) -> tuple[dict, np.ndarray]:
            outputs, mask = state
            return self.step(outputs[LOGITS][:, -1:].argmax(-1).astype(np.int64), mask, outputs)

        return time_decode(lambda: self.prefill(ids), step, batch, prompt_len, new_tokens, warmup, repeats)
