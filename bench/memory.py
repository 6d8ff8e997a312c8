"""Peak resident memory of a device agent and of the base station, per model.

For every model in the registry a tiny scenario (one device with 4 GiB of
memory and a whole core, so that it starts quickly: memory does not depend
on the CPU share; a few tasks; short profiling) runs on the local testbed,
and the
high-water mark of resident memory (``VmHWM`` in ``/proc/PID/status``) of
the device agent and of the BS process is sampled every 0.1 s while they
run.  The baseline, measured in the same run, is the peak resident memory
of a bare interpreter that only imports the agent and station modules
(Python, torch, numpy): what a node costs before any model is loaded.  The
table shows each peak, the baseline, and the part above it beside the
model's parameter bytes.  Quick mode measures only the models whose trained
weights are already cached (training some takes minutes) and names the
others; full mode trains what is missing.

    .venv/bin/python bench/memory.py [--quick | --full] [--models A,B]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, load_average, print_table, write_results

from splitlab.experiment import run_scenario
from splitlab.models import MODELS, build_model
from splitlab.scenario import Scenario, parse_scenario
from splitlab.testbed import LocalTestbed
from splitlab.weights import weights_path

WORKSPACE = RESULTS_DIR / "memory"
SAMPLE_S = 0.1
MIB = 2**20


def high_water_bytes(pid: int) -> int | None:
    """``VmHWM`` of a running process in bytes, or ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def baseline_bytes() -> int:
    """Peak RSS of an interpreter that imports the node programs and exits."""
    code = (
        "import resource, splitlab.agent, splitlab.station; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(output.strip()) * 1024


def tiny_scenario(name: str, *, tasks: int) -> Scenario:
    """One fast device running ``name`` on a few tasks."""
    return parse_scenario(
        {
            "name": f"memory-{name}",
            "model": name,
            "workload": {"tasks_per_device": tasks, "period_ms": 100},
            "profiling": {"warmup": 1, "repeats": 3},
            "devices": [
                {"name": "pi", "cpu_share": 1.0, "memory_mb": 4096,
                 "link": {"latency_ms": 5, "rate_mbps": 50}},
            ],
        },
        source="bench/memory.py",
    )  # fmt: skip


def weights_cached(scenario: Scenario) -> bool:
    """Whether the scenario's model is trained already (in the weights cache)."""
    return weights_path(
        scenario.model,
        scenario.data.dataset,
        data_dir=scenario.data.dir,
        epochs=scenario.training.epochs,
        seed=scenario.seed,
    ).is_file()


def bench_model(scenario: Scenario) -> dict[str, Any]:
    """Run the tiny scenario of one model and return the nodes' peaks."""
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample(testbed: LocalTestbed) -> None:
        while not done.is_set():
            pids: dict[str, int] = {}
            # The scenario has one device.
            for device in testbed.devices.values():
                pids["device"] = device.process.pid
            if testbed.station is not None:
                pids["bs"] = testbed.station.pid
            for role, pid in pids.items():
                value = high_water_bytes(pid)
                if value is not None:
                    peaks[role] = max(peaks.get(role, 0), value)
            time.sleep(SAMPLE_S)

    def on_started(testbed: LocalTestbed) -> None:
        threading.Thread(target=sample, args=(testbed,), daemon=True).start()

    outcome = run_scenario(scenario, workspace=WORKSPACE, on_started=on_started)
    done.set()
    model = build_model(scenario.model)
    return {
        "model": scenario.model,
        "status": outcome.status,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "device_peak_bytes": peaks.get("device"),
        "bs_peak_bytes": peaks.get("bs"),
    }


def main() -> None:
    """Run the bench over the registry, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 tasks per model")
    mode.add_argument("--full", action="store_true", help="20 tasks per model")
    parser.add_argument("--models", help="only these (comma-separated)")
    args = parser.parse_args()
    tasks = 20 if args.full else 3
    names = args.models.split(",") if args.models else list(MODELS)
    started_load = load_average()[0]

    scenarios = [tiny_scenario(name, tasks=tasks) for name in names]
    skipped = [s.model for s in scenarios if not args.full and not weights_cached(s)]
    baseline = baseline_bytes()
    rows = [bench_model(s) for s in scenarios if s.model not in skipped]
    for row in rows:
        row["baseline_bytes"] = baseline
        for role in ("device", "bs"):
            peak = row[f"{role}_peak_bytes"]
            row[f"{role}_above_baseline_bytes"] = (
                None if peak is None else peak - baseline
            )

    def mib(value: int | None) -> float | None:
        return None if value is None else value / MIB

    print("peak resident memory (VmHWM) in MiB; baseline: interpreter + imports")
    print_table(
        ["model", "params", "baseline", "device", "above", "BS", "above",
         "status"],
        [
            [
                row["model"], mib(row["param_bytes"]), mib(baseline),
                mib(row["device_peak_bytes"]),
                mib(row["device_above_baseline_bytes"]),
                mib(row["bs_peak_bytes"]), mib(row["bs_above_baseline_bytes"]),
                row["status"],
            ]
            for row in rows
        ],
    )  # fmt: skip
    if skipped:
        print(f"skipped (weights not cached yet): {', '.join(skipped)}")
    write_results(
        "memory",
        {
            "tasks_per_device": tasks,
            "sample_s": SAMPLE_S,
            "skipped_untrained": skipped,
            "rows": rows,
        },
        started_load=started_load,
    )


if __name__ == "__main__":
    main()
