"""Whole runs side by side: every algorithm and scheduler, measured delays.

Each combination runs the scenario end to end on the local testbed with
:func:`splitlab.experiment.run_scenario` (processes, CPU limits, emulated
links, real inference), and the measured delay of every task is read back
from the results store.  Two scenarios:

``default``
    The bundled default: AlexNet, four Raspberry Pi 4 class devices on links
    of 5 to 100 ms and 50 to 5 Mbit/s, a task every 300 ms.
``contended``
    Four Raspberry Pi 4 class devices on fast links (1 to 5 ms, 50 to 200
    Mbit/s), Poisson arrivals every 60 ms on average, a 250 ms deadline and
    two priorities: offloading everything loads the single BS worker to
    about 90 % and running everything locally loads each device as much,
    so the BS queue and its scheduler matter.

For every run: mean and p95 of the measured delay, the mean the planner
predicted, and the ratio of the mean delay of ``offload-all``,
``local-only`` and ``neurosurgeon`` (each with ``fcfs``, measured in this
same bench run) to this run's mean: above 1 means this run is faster.
Targets on the default scenario: greedy at least 2x faster than offload-all
and local-only, and never slower than neurosurgeon.

Quick mode runs, on both scenarios, local-only, offload-all, neurosurgeon
and greedy with fcfs, and on the contended one also greedy with every other
scheduler (on the default scenario the BS queue stays almost empty, so the
schedulers are alike there); the default gets 8 tasks per device and the
contended one 15.  Full mode runs every algorithm with every scheduler
(local-only once: it never uses the BS) with 20 and 50 tasks per device.

    .venv/bin/python bench/endtoend.py [--quick | --full]
        [--scenarios default,contended] [--algorithms A,B] [--schedulers S,T]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    load_average,
    percentile,
    print_table,
    write_results,
)

from splitlab.experiment import run_scenario
from splitlab.plan import ALGORITHMS
from splitlab.results import ResultStore
from splitlab.scenario import Scenario, load_scenario, parse_scenario
from splitlab.schedule import SCHEDULERS

WORKSPACE = RESULTS_DIR / "endtoend"
BASELINES = ("offload-all", "local-only", "neurosurgeon")
QUICK_ALGORITHMS = ("local-only", "offload-all", "neurosurgeon", "greedy")
# (latency ms, rate Mbit/s) of the contended scenario's devices, in turn.
FAST_LINKS = ((1, 100), (2, 200), (5, 50), (1, 200))
TARGET_SPEEDUP = 2.0


@dataclass(frozen=True, slots=True)
class Combination:
    """One run to make: a scenario, an algorithm and a scheduler."""

    scenario: str
    algorithm: str
    scheduler: str


def contended_scenario() -> Scenario:
    """Four devices on fast links with frequent tasks: the BS queue matters."""
    return parse_scenario(
        {
            "name": "contended",
            "model": "alexnet",
            "workload": {"tasks_per_device": 50, "period_ms": 60,
                         "arrivals": "poisson", "deadline_ms": 250},
            "devices": [
                {"name": f"dev{index}", "class": "rpi4", "priority": index % 2,
                 "link": {"latency_ms": FAST_LINKS[index % 4][0],
                          "rate_mbps": FAST_LINKS[index % 4][1]}}
                for index in range(4)
            ],
        },
        source="bench/endtoend.py",
    )  # fmt: skip


def combinations(
    scenarios: list[str],
    *,
    full: bool,
    algorithms: list[str] | None,
    schedulers: list[str] | None,
) -> list[Combination]:
    """The runs of the chosen mode, baselines first in each scenario."""
    chosen: list[Combination] = []
    for scenario in scenarios:
        if full:
            pairs = [
                (algorithm, scheduler)
                for algorithm in ALGORITHMS
                for scheduler in SCHEDULERS
                if algorithm != "local-only" or scheduler == "fcfs"
            ]
        else:
            pairs = [(algorithm, "fcfs") for algorithm in QUICK_ALGORITHMS]
            if scenario == "contended":
                pairs += [("greedy", s) for s in SCHEDULERS if s != "fcfs"]
        for algorithm, scheduler in pairs:
            if algorithms and algorithm not in algorithms:
                continue
            if schedulers and scheduler not in schedulers:
                continue
            chosen.append(Combination(scenario, algorithm, scheduler))
    return chosen


def measure(
    base: Scenario, combination: Combination, *, tasks: int, workspace: Path
) -> dict[str, Any]:
    """Run one combination and summarise its measured and predicted delays."""
    scenario = base.with_overrides(
        algorithm=combination.algorithm,
        scheduler=combination.scheduler,
        **{"workload.tasks_per_device": tasks},
    )
    load = load_average()[0]
    started_s = time.perf_counter()
    outcome = run_scenario(scenario, workspace=workspace)
    wall_s = time.perf_counter() - started_s
    with ResultStore(outcome.store) as store:
        records = store.tasks(outcome.run_id)
        predicted = [p.delay_s for p in store.predictions(outcome.run_id)]
        cuts = store.cuts(outcome.run_id)
    delays_s = [record.delay_s for record in records]
    return {
        "scenario": combination.scenario,
        "algorithm": combination.algorithm,
        "scheduler": combination.scheduler,
        "run_id": outcome.run_id,
        "status": outcome.status,
        "reason": outcome.reason,
        "limit_mechanism": outcome.limit_mechanism,
        "load_average": round(load, 2),
        "wall_s": round(wall_s, 1),
        "tasks": len(delays_s),
        "cuts": cuts,
        "mean_ms": sum(delays_s) / len(delays_s) * 1e3 if delays_s else None,
        "p95_ms": percentile(delays_s, 0.95) * 1e3 if delays_s else None,
        "predicted_mean_ms": (
            sum(predicted) / len(predicted) * 1e3 if predicted else None
        ),
        "all_match_unsplit": all(record.matches_unsplit for record in records),
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Give every row its speedup over each baseline of its own scenario.

    A row also names the baselines whose runs chose the very same cuts
    (``same_cuts_as``): between those, only the scheduler and run-to-run
    noise can make the measured delays differ.
    """
    for row in rows:
        row["same_cuts_as"] = []
        for baseline in BASELINES:
            reference = next(
                (
                    other
                    for other in rows
                    if other["scenario"] == row["scenario"]
                    and other["algorithm"] == baseline
                    and other["scheduler"] == "fcfs"
                ),
                None,
            )
            row[f"vs_{baseline}"] = (
                reference["mean_ms"] / row["mean_ms"]
                if reference is not None and reference["mean_ms"] and row["mean_ms"]
                else None
            )
            if (
                reference is not None
                and reference is not row
                and reference["cuts"] == row["cuts"]
            ):
                row["same_cuts_as"].append(baseline)


def check_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Greedy with fcfs on the default scenario against the three targets."""
    greedy = next(
        (
            row
            for row in rows
            if row["scenario"] == "default"
            and row["algorithm"] == "greedy"
            and row["scheduler"] == "fcfs"
        ),
        None,
    )
    if greedy is None:
        return {}
    return {
        "greedy_vs_offload_all": greedy["vs_offload-all"],
        "greedy_vs_local_only": greedy["vs_local-only"],
        "greedy_vs_neurosurgeon": greedy["vs_neurosurgeon"],
        "meets_2x_offload_all": (greedy["vs_offload-all"] or 0) >= TARGET_SPEEDUP,
        "meets_2x_local_only": (greedy["vs_local-only"] or 0) >= TARGET_SPEEDUP,
        "not_worse_than_neurosurgeon": (greedy["vs_neurosurgeon"] or 0) >= 1.0,
        "greedy_same_cuts_as": greedy["same_cuts_as"],
    }


def main() -> None:
    """Run the chosen combinations, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    parser.add_argument("--scenarios", default="default,contended")
    parser.add_argument("--algorithms", help="only these (comma-separated)")
    parser.add_argument("--schedulers", help="only these (comma-separated)")
    parser.add_argument("--tasks", type=int, help="tasks per device in every run")
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    args = parser.parse_args()
    started_load = load_average()[0]

    bases = {"default": load_scenario("default"), "contended": contended_scenario()}
    tasks = {"default": 20, "contended": 50} if args.full else {
        "default": 8, "contended": 15}  # fmt: skip
    names = args.scenarios.split(",")
    plan = combinations(
        names,
        full=args.full,
        algorithms=args.algorithms.split(",") if args.algorithms else None,
        schedulers=args.schedulers.split(",") if args.schedulers else None,
    )

    rows: list[dict[str, Any]] = []
    for number, combination in enumerate(plan, start=1):
        row = measure(
            bases[combination.scenario],
            combination,
            tasks=args.tasks or tasks[combination.scenario],
            workspace=args.workspace,
        )
        rows.append(row)
        print(
            f"[{number}/{len(plan)}] {combination.scenario} {combination.algorithm}"
            f" {combination.scheduler}: mean {row['mean_ms']:.1f} ms, {row['status']},"
            f" {row['wall_s']} s, load {row['load_average']}",
            flush=True,
        )
    add_ratios(rows)

    print("measured delay per task; vs X = mean(X with fcfs) / mean(this run)")
    print_table(
        ["scenario", "algorithm", "sched", "tasks", "mean ms", "p95 ms",
         "pred ms", "vs offload", "vs local", "vs neuro", "cuts", "same cuts as"],
        [
            [
                row["scenario"], row["algorithm"], row["scheduler"],
                row["tasks"], row["mean_ms"], row["p95_ms"],
                row["predicted_mean_ms"], row["vs_offload-all"],
                row["vs_local-only"], row["vs_neurosurgeon"],
                ",".join(str(cut) for cut in row["cuts"].values()),
                ",".join(row["same_cuts_as"]) or "-",
            ]
            for row in rows
        ],
    )  # fmt: skip
    targets = check_targets(rows)
    for key, value in targets.items():
        print(f"{key:30} {value}")
    write_results(
        "endtoend",
        {
            "mode": "full" if args.full else "quick",
            "tasks_per_device": {name: args.tasks or tasks[name] for name in names},
            "targets": targets,
            "rows": rows,
        },
        started_load=started_load,
    )


if __name__ == "__main__":
    main()
