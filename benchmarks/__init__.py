"""Benchmarks that print numbers: run each as `python -m benchmarks.NAME` from the checkout."""
