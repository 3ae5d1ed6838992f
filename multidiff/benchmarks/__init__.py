"""Benchmarks run by `multidiff bench NAME`: each module prints a table (see docs/)."""
