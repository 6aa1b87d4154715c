"""Import cost of each bertrio package against the bare framework it wraps, measured in the same run.

    .venv/bin/python benchmarks/bench_import.py [--repeats 5] [--only torch,tf] [--threshold 0.5] [--markdown]

Each row times fresh interpreters (``python -c CODE``, start-up included on both sides so it cancels)
importing the bare framework and then the bertrio package, alternately, ``--repeats`` times each, and
prints the medians of two clocks and their differences: wall seconds, and CPU seconds (user + system of
the child process). A difference above ``--threshold`` seconds on the ``--flag-on`` clock (default: CPU,
which other processes on a shared machine disturb far less than the wall clock) is flagged and makes the
exit code 1. Rows whose framework is not installed are skipped.

=========  =======================  ==========================================
row        bare                     ours
=========  =======================  ==========================================
common     ``pass`` (bare Python)   ``import bert_common``
cli        ``pass``                 ``bertrio --help`` (every subcommand parser)
torch      ``import torch``         ``import bert_torch``
tf         ``import tensorflow``    ``import bert_tf`` (TensorFlow imports Keras itself)
flax       ``import flax.linen``    ``import bert_flax``
=========  =======================  ==========================================

The load average before and after is printed: on a shared machine the wall seconds move with it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CLI_HELP = "import sys\nfrom bert_common.cli import main\nsys.exit(main(['--help']))"
# row -> (module that must be installed, bare code, our code)
ROWS = {
    "common": (None, "pass", "import bert_common"),
    "cli": (None, "pass", CLI_HELP),
    "torch": ("torch", "import torch", "import bert_torch"),
    "tf": ("tensorflow", "import tensorflow", "import bert_tf"),
    "flax": ("flax", "import flax.linen", "import bert_flax"),
}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished (waited-for) children, summed
    return r.ru_utime + r.ru_stime


def run_once(code: str) -> tuple[float, float]:
    """(wall, CPU) seconds of a fresh ``python -c code`` (it must exit 0); runs are sequential, so the change
    in the finished children's CPU total is this child's."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def measure(bare: str, ours: str, repeats: int) -> dict[str, tuple[float, float]]:
    """{"wall" | "cpu": (bare, ours) medians} of ``repeats`` interleaved runs, after one untimed warm-up of
    each side (page cache)."""
    run_once(bare), run_once(ours)
    b, o = [], []
    for _ in range(repeats):
        b.append(run_once(bare))
        o.append(run_once(ours))
    return {clock: (statistics.median(x[i] for x in b), statistics.median(x[i] for x in o))
            for i, clock in enumerate(("wall", "cpu"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each side per row (median reported)")
    p.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows out of {','.join(ROWS)}")
    p.add_argument("--threshold", type=float, default=0.5, help="flag a difference above this many seconds")
    p.add_argument("--flag-on", choices=("cpu", "wall"), default="cpu", help="the clock --threshold applies to")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats} must be >= 1")
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; choose from {list(ROWS)}")

    load0 = os.getloadavg()[0]
    print(f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats} fresh interpreters per side; load average {load0:.2f} before", flush=True)
    if args.markdown:
        print("| row | bare | ours | wall s bare / ours | difference | CPU s bare / ours | difference | |\n"
              "|---|---|---|---:|---:|---:|---:|---|")
    else:
        print(f"{'row':7s} {'bare':18s} {'ours':18s} {'wall s bare / ours':>19s} {'diff':>6s}   "
              f"{'CPU s bare / ours':>18s} {'diff':>6s}")
    over = []
    for row in rows:
        needs, bare, ours = ROWS[row]
        if needs is not None and importlib.util.find_spec(needs) is None:
            print(f"{row}: skipped ({needs} is not installed)")
            continue
        m = measure(bare, ours, args.repeats)
        (wb, wo), (cb, co) = m["wall"], m["cpu"]
        fb, fo = m[args.flag_on]
        flag = "OVER" if fo - fb > args.threshold else "ok"
        if flag == "OVER":
            over.append(row)
        label = "bertrio --help" if ours == CLI_HELP else ours
        if args.markdown:
            print(f"| {row} | `{bare}` | `{label}` | {wb:.2f} / {wo:.2f} | {wo - wb:+.2f} | {cb:.2f} / {co:.2f} | "
                  f"{co - cb:+.2f} | {flag} |", flush=True)
        else:
            print(f"{row:7s} {bare:18s} {label:18s} {wb:8.2f} / {wo:8.2f} {wo - wb:+6.2f}   {cb:7.2f} / {co:8.2f} "
                  f"{co - cb:+6.2f}  {flag}", flush=True)
    print(f"# load average {os.getloadavg()[0]:.2f} after; threshold {args.threshold} s on {args.flag_on} time: "
          + (f"OVER in {over}" if over else "every row within"))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
