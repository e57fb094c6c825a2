"""Validation of sculpted models: backends behind one runner interface, and what is measured with them.

`runners` holds the `Runner` protocol (token ids in, float32 CPU logits out) and its
PyTorch backend; ONNX Runtime and TensorRT runners join it behind the same protocol.
`perplexity` scores any runner on non-overlapping windows, the pruning papers' protocol.
Latency, memory and the pass/fail parity gates are measured here too as they arrive.

Not the PyPI package of the same name: this one ships inside llm-sculpt.
"""
