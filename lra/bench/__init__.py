"""Benchmarks of the attention families: cost versus length (``lra.bench.efficiency``) and distance
from the attention each one approximates (``lra.bench.approximation``). See docs/benchmarks.md."""
