"""Measurement primitives every layer may use: the runner interface, perplexity and latency.

`runners` holds the `Runner` protocol (token ids in, float32 CPU logits out), the
`MeasuredRunner` the validate stage times, and the PyTorch runner. `perplexity` scores any
runner on non-overlapping windows, the pruning papers' protocol; `latency` times a torch
model's prefill and decode, or any backend's calls. They sit below `pipeline.compress` (which
scores candidates with them) and below `validators` and `exporters` (which add backends and
checks on top); they import only `pipeline.data` and `pipeline.errors`.
"""
