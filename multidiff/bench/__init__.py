"""Benchmarks run by `multidiff bench NAME` and by the scripts under benchmarks/."""
