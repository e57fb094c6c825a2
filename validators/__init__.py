"""Validation of sculpted models: backends behind one runner interface, and what is measured with them.

The runner interface, the PyTorch runner, perplexity and latency are `pipeline.measures`
(compression uses them too). Here: the ONNX Runtime and TensorRT runners (`ort_runner`,
`trt_runner`, one KV-cache loop in `graph_runner`) behind the same protocol, `backends`
(which backends an artifact can be measured on, and opening them),
`memory` (peak memory, in a fresh process), `parity` (backends against each other) and
`gates` (the pass/fail thresholds).

Not the PyPI package of the same name: this one ships inside llm-sculpt.
"""
