"""Benchmarks: ``python -m bench.servers`` and ``python -m bench.auth_overhead``."""
