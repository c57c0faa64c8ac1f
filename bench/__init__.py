"""Benchmarks: they print figures; they are not tests. Run with `make bench` or `python -m bench`."""
