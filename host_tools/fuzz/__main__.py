"""`python -m host_tools.fuzz` (`make fuzz`): every target, or those named, in its own
micropython process; prints inputs, inputs per second and findings per target, and the
findings themselves (input in hex). Exit status 1 if anything was found, 2 if a target
could not run."""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from host_tools.fuzz.driver import TARGETS, FuzzError, run_target


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_tools.fuzz", description=__doc__)
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help=f"targets to run (default: all): {', '.join(TARGETS)}")
    p.add_argument("--inputs", type=int, default=120_000, help="inputs per target")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="targets run at once (one micropython process each)")
    p.add_argument("--interpreter", help="another micropython, e.g. the 32-bit one")
    args = p.parse_args(argv)
    targets = args.targets or list(TARGETS)
    for t in targets:
        if t not in TARGETS:
            print(f"fuzz: no target {t!r}; targets: {', '.join(TARGETS)}", file=sys.stderr)
            return 2
    print(f"fuzz: {len(targets)} targets x {args.inputs} inputs, seed {args.seed}, "
          f"{args.jobs} at a time", flush=True)
    results = {}
    failed = False
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = {t: pool.submit(run_target, t, args.inputs, args.seed, args.interpreter,
                                  os.path.join(tmp, t)) for t in targets}
        for t, fut in futures.items():
            try:
                r = results[t] = fut.result()
            except FuzzError as e:
                print(f"fuzz: {e}", file=sys.stderr)
                failed = True
                continue
            rate = r["inputs"] / max(r["ms"], 1) * 1000
            kinds = ", ".join(f"{k} x{n}" for k, n in r["kinds"].items()) or "-"
            print(f"{t:9} {r['inputs']:>9} inputs  {rate:>9.0f} inputs/s  "
                  f"{r['findings']:>4} findings  {kinds}", flush=True)
            for line in r["lines"]:
                print("   ", line)
    total = sum(r["inputs"] for r in results.values())
    found = sum(r["findings"] for r in results.values())
    cpu_s = sum(r["ms"] for r in results.values()) / 1000
    wall = time.monotonic() - t0
    print(f"total     {total:>9} inputs  {total / max(cpu_s, 1e-3):>9.0f} inputs/s per process"
          f"  {found:>4} findings")
    print(f"wall      {wall:>9.1f} s       {total / max(wall, 1e-3):>9.0f} inputs/s overall "
          f"({args.jobs} processes at a time)")
    if failed:
        return 2
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
