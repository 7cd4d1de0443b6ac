"""Benchmarks: run as modules from the repo root (``python -m bench.encoders``) so they import the packages,
not themselves."""
