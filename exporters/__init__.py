"""Deployment: ONNX export of sculpted models, TensorRT engine builds, the TensorRT-compatibility
lint and the edge (Jetson) build kit."""
