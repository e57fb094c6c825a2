"""The part of the pipeline the comparison benchmarks run (leaderboard, search vs uniform).

They compare architectures by perplexity in torch and time prefill/decode themselves, next to the
dense model: no ONNX export or engine build, and validate measures perplexity on torch only.
"""

STAGES = ("search", "reform", "slice", "validate")
PERPLEXITY_ONLY = {"validate.backends": ["torch"], "validate.latency": False, "validate.memory": False}
