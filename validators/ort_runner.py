"""ONNX Runtime backend: scores, greedy generation with a KV cache, and latency, from an exported graph.

It feeds the graph exactly as TensorRT is fed (see exporters/onnx_io.py): every prompt
starts after one masked dummy cache slot, so no input ever has a zero-length dimension,
and the cache it returns is passed back in as the next step's past. That loop is
`graph_runner.GraphRunner`, shared with the TensorRT runner; this module is one call of the
graph through an ONNX Runtime session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.onnx_io import LOGITS, GraphIO
from pipeline.errors import SculptError

from .graph_runner import GraphRunner

MODEL_FILE = "model.onnx"


class OrtRunner(GraphRunner):
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

    def _execute(self, feeds: dict, profile: str, logits_on_host: bool) -> dict:
        return self.run(feeds, logits_on_host)  # one graph serves prompts and steps alike


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
