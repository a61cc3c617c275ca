"""Benchmark scripts and the harness the tests share; run each as `python -m benchmarks.<name>` from the repo root."""
