"""Benchmarks; run them as scripts (see bench/roundtrip.py)."""
