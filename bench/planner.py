"""Planner benchmark: every heuristic's gap to the proven optimum, and run times.

Part 1 draws seeded random instances (1..6 devices, 1..12 stages, 1..3 tasks
per device, random profiles, links, arrivals and memory limits; the
scheduler cycles through fcfs/sjf/rr and the objective through total/max/
variance; variance instances keep at most 3 devices, because the exact
solver enumerates them), solves each with ``exact`` and reports, per
objective and heuristic, the mean and 95th percentile of the relative gap
``value / optimum - 1`` and the mean run time.  Part 2 times ``greedy`` as
the device count grows (one task per device) and as the stage count grows.

    .venv/bin/python bench/planner.py [--quick] [--instances N]

Writes bench/results/planner.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from splitlab.link import LinkSpec
from splitlab.plan import PlanningProblem, make_plan
from splitlab.profile import NodeProfile, StageProfile
from splitlab.search import OBJECTIVES, Objective
from splitlab.workload import TaskSpec

# local-only is left out: memory limits often forbid k = L.
HEURISTICS = (
    "offload-all",
    "neurosurgeon",
    "greedy",
    "trend",
    "annealing",
    "genetic",
)
SCHEDULERS = ("fcfs", "sjf", "rr")
RESULTS = Path(__file__).parent / "results" / "planner.json"


def random_profile(
    rng: random.Random, node: str, stages: int, scale: float
) -> NodeProfile:
    """A chain whose activations shrink on the whole, like a CNN's."""
    size = rng.randint(2_000, 20_000)
    input_bytes = size
    parts = []
    for index in range(stages):
        size = max(16, int(size * rng.uniform(0.3, 1.4)))
        median_s = rng.uniform(0.001, 0.01) * scale
        parts.append(
            StageProfile(
                name=f"s{index + 1}",
                median_s=median_s,
                p95_s=median_s,
                output_bytes=size,
                param_bytes=rng.randint(0, 2_000),
            )
        )
    return NodeProfile(
        node=node, model="random", input_bytes=input_bytes, stages=tuple(parts)
    )


def random_problem(
    seed: int,
    *,
    devices: int,
    stages: int,
    tasks_per_device: int,
    scheduler: str,
    objective: Objective,
    window_s: float,
) -> PlanningProblem:
    """One instance; the BS is 3-10 times faster than a device."""
    rng = random.Random(seed)
    names = [f"d{i}" for i in range(devices)]
    bs = random_profile(random.Random(seed * 7919 + 1), "bs", stages, 1.0)
    profiles = {}
    for name in names:
        # Same stage shapes as the BS (one model), slower by a device factor.
        slower = rng.uniform(3.0, 10.0)
        profiles[name] = NodeProfile(
            node=name,
            model=bs.model,
            input_bytes=bs.input_bytes,
            stages=tuple(
                StageProfile(
                    name=stage.name,
                    median_s=stage.median_s * slower,
                    p95_s=stage.p95_s * slower,
                    output_bytes=stage.output_bytes,
                    param_bytes=stage.param_bytes,
                )
                for stage in bs.stages
            ),
        )
    tasks = []
    for name in names:
        for index in range(tasks_per_device):
            tasks.append(
                TaskSpec(
                    task_id=len(tasks),
                    device=name,
                    index=index,
                    arrival_s=rng.uniform(0.0, window_s),
                    sample=0,
                )
            )
    return PlanningProblem(
        device_profiles=profiles,
        bs_profile=bs,
        links={
            name: LinkSpec(
                latency_s=rng.uniform(0.001, 0.02), rate_bps=rng.uniform(1e6, 5e7)
            )
            for name in names
        },
        tasks=tuple(tasks),
        scheduler=scheduler,
        workers=rng.choice((1, 1, 2)),
        device_memory_bytes={name: rng.randint(0, 1_000 * stages) for name in names},
        objective=objective,
        seed=seed,
    )


def timed(algorithm: str, problem: PlanningProblem) -> tuple[float, float]:
    """The plan's objective value and the planning time in seconds."""
    started_s = time.perf_counter()
    plan = make_plan(algorithm, problem)
    return plan.objective_value(problem.objective), time.perf_counter() - started_s


def timed_moves(problem: PlanningProblem) -> tuple[float, int]:
    """Greedy's planning time, and how many devices it moved off the start."""
    started_s = time.perf_counter()
    plan = make_plan("greedy", problem)
    took_s = time.perf_counter() - started_s
    start = make_plan("neurosurgeon", problem).cuts
    return took_s, sum(plan.cuts[d] != start[d] for d in problem.devices)


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def gaps(instances: int) -> dict[str, object]:
    """Part 1: the heuristics against the exact optimum."""
    rows: list[dict[str, object]] = []
    for seed in range(instances):
        rng = random.Random(10_000 + seed)
        objective = OBJECTIVES[seed % 3]
        problem = random_problem(
            seed,
            devices=rng.randint(1, 3 if objective == "variance" else 6),
            stages=rng.randint(1, 12),
            tasks_per_device=rng.randint(1, 3),
            scheduler=SCHEDULERS[seed // 3 % 3],
            objective=objective,
            window_s=0.05,
        )
        optimum, exact_s = timed("exact", problem)
        row: dict[str, object] = {
            "seed": seed,
            "objective": objective,
            "scheduler": problem.scheduler,
            "devices": len(problem.devices),
            "stages": problem.num_stages,
            "tasks": len(problem.tasks),
            "optimum": optimum,
            "time_s": {"exact": exact_s},
            "gap": {"exact": 0.0},
        }
        for name in HEURISTICS:
            value, took_s = timed(name, problem)
            assert value >= optimum - 1e-9, (seed, name, value, optimum)
            row["time_s"][name] = took_s  # type: ignore[index]
            row["gap"][name] = (  # type: ignore[index]
                value / optimum - 1 if optimum > 0 else float(value > 1e-12)
            )
        rows.append(row)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for objective in OBJECTIVES:
        chosen = [r for r in rows if r["objective"] == objective]
        summary[objective] = {
            name: {
                "mean_gap": statistics.fmean(r["gap"][name] for r in chosen),  # type: ignore[index]
                "p95_gap": p95([r["gap"][name] for r in chosen]),  # type: ignore[index]
                "mean_time_ms": 1e3
                * statistics.fmean(r["time_s"][name] for r in chosen),  # type: ignore[index]
                "optimal_share": sum(
                    r["gap"][name] <= 1e-9  # type: ignore[index]
                    for r in chosen
                )
                / len(chosen),
            }
            for name in (*HEURISTICS, "exact")
        }
    return {"instances": instances, "summary": summary, "rows": rows}


def growth(
    device_counts: tuple[int, ...], stage_counts: tuple[int, ...]
) -> dict[str, object]:
    """Part 2: greedy's planning time against N (L = 6) and L (N = 20).

    The arrivals spread over 50 ms per device, so the BS load stays about
    the same as N grows; ``moved`` counts the devices whose cut greedy moved
    away from the contention-free start (a lower bound on its rounds).
    """
    by_devices = []
    for count in device_counts:
        problem = random_problem(
            count,
            devices=count,
            stages=6,
            tasks_per_device=1,
            scheduler="fcfs",
            objective="total",
            window_s=0.05 * count,
        )
        took_s, moved = timed_moves(problem)
        by_devices.append(
            {"devices": count, "stages": 6, "time_s": took_s, "moved": moved}
        )
        print(f"  greedy N={count:5d} L=6   {took_s:9.3f} s, {moved} moved", flush=True)
    by_stages = []
    for count in stage_counts:
        problem = random_problem(
            count,
            devices=20,
            stages=count,
            tasks_per_device=1,
            scheduler="fcfs",
            objective="total",
            window_s=1.0,
        )
        took_s, moved = timed_moves(problem)
        by_stages.append(
            {"devices": 20, "stages": count, "time_s": took_s, "moved": moved}
        )
        print(
            f"  greedy N=20    L={count:<4d}{took_s:9.3f} s, {moved} moved", flush=True
        )
    return {"by_devices": by_devices, "by_stages": by_stages}


def main() -> None:
    """Run both parts, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    parser.add_argument("--instances", type=int, default=None)
    args = parser.parse_args()
    instances = args.instances or (60 if args.quick else 200)
    device_counts = (10, 30, 100, 300) if args.quick else (10, 30, 100, 300, 1000)
    stage_counts = (4, 8, 16, 32) if args.quick else (4, 8, 16, 32, 64)

    started_s = time.perf_counter()
    print(f"part 1: {instances} instances, every heuristic against exact")
    part1 = gaps(instances)
    for objective, table in part1["summary"].items():  # type: ignore[attr-defined]
        print(f"\nobjective {objective}")
        heads = ("mean gap", "p95 gap", "optimal", "mean ms")
        print(f"  {'algorithm':14s}" + "".join(f"{head:>10s}" for head in heads))
        for name, figures in table.items():
            print(
                f"  {name:14s}{figures['mean_gap']:10.2%}{figures['p95_gap']:10.2%}"
                f"{figures['optimal_share']:10.0%}{figures['mean_time_ms']:10.2f}"
            )

    print("\npart 2: greedy run time growth")
    part2 = growth(device_counts, stage_counts)
    by_devices = part2["by_devices"]
    by_stages = part2["by_stages"]
    for series, key in ((by_devices, "devices"), (by_stages, "stages")):
        first, last = series[0], series[-1]  # type: ignore[index]
        ratio = last["time_s"] / first["time_s"]
        factor = last[key] / first[key]
        print(
            f"  {key} x{factor:g}: time x{ratio:.1f} "
            f"(log-log slope {math.log(ratio) / math.log(factor):.2f})"
        )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {platform.machine()} "
                f"{platform.processor() or ''} python {platform.python_version()}",
                "quick": args.quick,
                "wall_s": time.perf_counter() - started_s,
                "gaps": part1,
                "growth": part2,
            },
            indent=1,
        )
    )
    print(f"\nwrote {RESULTS} in {time.perf_counter() - started_s:.0f} s")


if __name__ == "__main__":
    main()
