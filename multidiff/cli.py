"""`multidiff` command line. Subcommands appear here as they become real."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with main(argv), one-line help)
BENCHMARKS = {
    "accuracy": ("multidiff.bench.sampler_accuracy", "sampler error vs model calls against the exact Gaussian oracle"),
    "overhead": ("multidiff.bench.sampler_overhead", "per-step sampler overhead vs diffusers' schedulers"),
}


def _bench(args) -> int:
    module, _ = BENCHMARKS[args.name]
    try:
        importlib.import_module(module).main(args.rest)
    except ModuleNotFoundError as e:
        print(f"multidiff bench {args.name}: needs the package {e.name!r}; "
              f"install the peers with: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="multidiff", description="One diffusion core for image, audio and video.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    b = sub.add_parser("bench", help="run a benchmark and print its table",
                       description="Benchmarks: " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    b.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see NAME --help)")
    b.set_defaults(func=_bench)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
