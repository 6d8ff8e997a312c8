"""Load run: many devices, many tasks, every task recorded; peak memory.

Runs a scenario of N devices x K tasks on the local testbed (default 16 x 200,
AlexNet, Raspberry Pi 3 class devices on four kinds of link) and prints the
tasks recorded, the wall time, and the peak resident memory of the base
station, of the largest device and of all nodes together (sampled from
/proc every 0.5 s), then writes bench/results/load.json.

    .venv/bin/python bench/load.py [--devices 16] [--tasks 200] [--model alexnet]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from splitlab.experiment import run_scenario
from splitlab.results import ResultStore
from splitlab.scenario import parse_scenario
from splitlab.testbed import LocalTestbed

LINKS = [(5, 50), (20, 20), (50, 10), (100, 5)]


def resident_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--period-ms", type=float, default=1000.0)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--workspace", type=Path, default=Path("bench/results/load"))
    args = parser.parse_args()

    scenario = parse_scenario(
        {
            "name": f"load-{args.devices}x{args.tasks}",
            "model": args.model,
            "workload": {"tasks_per_device": args.tasks, "period_ms": args.period_ms,
                         "arrivals": "poisson"},
            "algorithm": "greedy",
            "devices": [
                {"name": f"dev{index:02d}", "class": "rpi3",
                 "link": {"latency_ms": LINKS[index % 4][0],
                          "rate_mbps": LINKS[index % 4][1]}}
                for index in range(args.devices)
            ],
        },
        source="bench/load.py",
    )  # fmt: skip

    peaks: dict[str, int] = {}
    total_peak = 0
    done = threading.Event()

    def sample(testbed: LocalTestbed) -> None:
        nonlocal total_peak
        while not done.is_set():
            pids = {name: d.process.pid for name, d in testbed.devices.items()}
            if testbed.station is not None:
                pids["bs"] = testbed.station.pid
            total = 0
            for name, pid in pids.items():
                rss = resident_bytes(pid)
                peaks[name] = max(peaks.get(name, 0), rss)
                total += rss
            total_peak = max(total_peak, total)
            time.sleep(0.5)

    def on_started(testbed: LocalTestbed) -> None:
        threading.Thread(target=sample, args=(testbed,), daemon=True).start()

    started = time.perf_counter()
    outcome = run_scenario(scenario, workspace=args.workspace, on_started=on_started)
    wall_s = time.perf_counter() - started
    done.set()
    with ResultStore(outcome.store) as store:
        recorded = len(store.tasks(outcome.run_id))
    devices = [value for name, value in peaks.items() if name != "bs"]
    result = {
        "devices": args.devices,
        "tasks_per_device": args.tasks,
        "model": args.model,
        "status": outcome.status,
        "reason": outcome.reason,
        "tasks_recorded": recorded,
        "tasks_expected": args.devices * args.tasks,
        "wall_s": round(wall_s, 1),
        "peak_rss_bs_mib": round(peaks.get("bs", 0) / 2**20, 1),
        "peak_rss_largest_device_mib": round(max(devices, default=0) / 2**20, 1),
        "peak_rss_all_nodes_mib": round(total_peak / 2**20, 1),
        "limit_mechanism": outcome.limit_mechanism,
    }
    for key, value in result.items():
        print(f"{key:30} {value}")
    out = Path("bench/results/load.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
