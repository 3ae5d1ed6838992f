"""Sampler error vs model calls against the exact Gaussian oracle (same as `multidiff bench accuracy`)."""
from multidiff.bench.sampler_accuracy import main

if __name__ == "__main__":
    main()
