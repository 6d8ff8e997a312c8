"""Does a calibrated device class run at its reference speed?

For each device class, a fresh process runs the calibration workload (the
one-thread fp32 GEMM of :mod:`splitlab.calibration`) while held to the
class's CPU share by the best limit mechanism here, and its GFLOP/s by the
wall clock is compared with the class's reference figure: a ratio of 1.0
means the emulated device computes as fast as the board it stands for.  The
machine's own speed is measured unlimited in the same run, before and
after, and the cost of one monitoring round over five nodes is timed.

    .venv/bin/python bench/calibration.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import load_average, median, print_table, write_results

from splitlab.calibration import CLASSES, class_share, measure_gflops
from splitlab.limit import LimitSpec, ProcessLimiter
from splitlab.monitor import Monitor, Target

# The calibration workload timed by the wall clock, as a task's delay is:
# what a device held to its share delivers.
WORKER = """
import json, statistics, sys, time
import torch
from splitlab.calibration import GEMM_SIZE as n
torch.set_num_threads(1)
a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
sys.stdin.readline()
rates = []
for _ in range(5):
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 0.8:
        torch.mm(a, b, out=out)
        count += 1
    rates.append(2 * n**3 * count / (time.perf_counter() - start) / 1e9)
print(json.dumps(statistics.median(rates)), flush=True)
"""


def limited_gflops(limiter: ProcessLimiter, share: float, name: str) -> float:
    """GFLOP/s of the workload in a process held to ``share``."""
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        limiter.apply(process.pid, LimitSpec(cpu_share=share), name=name)
        process.stdin.write("go\n")
        process.stdin.flush()
        return float(json.loads(process.stdout.readline()))
    finally:
        limiter.release(process.pid)
        process.kill()
        process.wait()


def monitor_round_s() -> float:
    """Wall time of one monitoring round over five live processes."""
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(5)]
    try:
        monitor = Monitor(
            [Target(f"n{i}", p.pid) for i, p in enumerate(sleepers)],
            interval_s=1.0,
            sink=lambda samples: None,
        )
        times = []
        for _ in range(20):
            start = time.perf_counter()
            monitor.sample()
            times.append(time.perf_counter() - start)
        return median(times)
    finally:
        for process in sleepers:
            process.kill()
            process.wait()


def main() -> None:
    started = load_average()[0]
    before, spread = measure_gflops()
    rows = []
    with ProcessLimiter(f"bench{int(time.time())}") as limiter:
        for spec in CLASSES.values():
            share = class_share(spec.reference_gflops, before)
            got = limited_gflops(limiter, share, spec.name)
            rows.append(
                [spec.name, spec.reference_gflops, round(share, 4), round(got, 2),
                 round(got / spec.reference_gflops, 2)]
            )  # fmt: skip
        mechanism = limiter.mechanism
    after, _ = measure_gflops()
    print(f"machine: {before:.1f} GFLOP/s before, {after:.1f} after "
          f"(spread {spread:.0%}); limits by {mechanism}")  # fmt: skip
    print_table(["class", "reference", "share", "emulated GFLOP/s", "ratio"], rows)
    round_s = monitor_round_s()
    print(f"one monitoring round over 5 nodes: {round_s * 1e3:.2f} ms "
          f"({round_s:.4f} of a 1 s interval)")  # fmt: skip
    write_results(
        "calibration",
        {"machine_gflops": [before, after], "spread": spread, "mechanism": mechanism,
         "classes": rows, "monitor_round_s": round_s},
        started_load=started,
    )  # fmt: skip


if __name__ == "__main__":
    main()
