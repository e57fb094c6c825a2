"""The backends a sculpted model runs on and the TensorRT versions it is built for.

The one list of each: the recipe, the CLI, the TensorRT lint and the validators read them here.
A bottom module: it imports nothing from llm-sculpt.
"""

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")  # validate.backends; torch is the reference
TRT_TARGETS = ("trt-10.3", "trt-10.x", "trt-11")  # build.target and the lint's tables (exporters/trt_ops/<target>.json)
