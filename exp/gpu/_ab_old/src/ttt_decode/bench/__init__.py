"""Benchmarks: the decode-kernel micro-benchmark (micro.py) and, beside it, the benchmark cells and sweeps."""
