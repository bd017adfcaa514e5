"""Benchmarks: each module runs as ``python -m bench.<name>`` and reports ratios against a
baseline measured in the same invocation (these machines are shared and noisy)."""
