"""Per-step overhead of our samplers vs diffusers' schedulers (same as `multidiff bench overhead`)."""
from multidiff.bench.sampler_overhead import main

if __name__ == "__main__":
    main()
