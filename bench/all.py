"""Run every side-by-side benchmark in turn and time each.

``--quick`` runs split, transport, link, memory and endtoend in their quick
modes (under 10 minutes on a 2-core machine); ``--full`` runs them in their
full modes and then the older planner, simulate and load benchmarks with
their own defaults (an hour or more).  Each benchmark runs as its own
process, prints its table and writes ``bench/results/NAME.json``; this
script adds ``bench/results/all.json`` with each one's exit code, wall time
and the load average before and after.

    .venv/bin/python bench/all.py --quick | --full
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import load_average, print_table, write_results

HERE = Path(__file__).resolve().parent
SIDE_BY_SIDE = ("split", "transport", "link", "memory", "endtoend")
OLDER = ("planner", "simulate", "load", "codec")


def main() -> None:
    """Run the benchmarks of the chosen mode and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    args = parser.parse_args()
    flag = "--full" if args.full else "--quick"
    runs = [(name, [flag]) for name in SIDE_BY_SIDE]
    if args.full:
        runs += [(name, []) for name in OLDER]
    started_load = load_average()[0]

    rows: list[dict[str, Any]] = []
    started_all_s = time.perf_counter()
    for name, options in runs:
        command = [sys.executable, str(HERE / f"{name}.py"), *options]
        print(f"\n=== {' '.join(command)}", flush=True)
        load = load_average()[0]
        started_s = time.perf_counter()
        # The working directory is the project root, where the older
        # benchmarks expect to be run from.
        code = subprocess.run(command, cwd=HERE.parent, check=False).returncode
        rows.append(
            {
                "bench": name,
                "exit_code": code,
                "wall_s": round(time.perf_counter() - started_s, 1),
                "load_average_start": round(load, 2),
                "load_average_end": round(load_average()[0], 2),
            }
        )
    total_s = time.perf_counter() - started_all_s

    print()
    print_table(
        ["bench", "exit", "wall s", "load start", "load end"],
        [list(row.values()) for row in rows],
    )
    print(f"total {total_s:.0f} s ({total_s / 60:.1f} min)")
    write_results(
        "all",
        {"mode": flag.lstrip("-"), "total_s": round(total_s, 1), "rows": rows},
        started_load=started_load,
    )
    if any(row["exit_code"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
