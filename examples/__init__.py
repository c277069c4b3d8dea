"""Example exports used by `make serve`, the docs and the benchmarks."""
