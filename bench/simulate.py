"""Time the simulator on 1k to 1M tasks against the implementation it replaced.

Usage::

    .venv/bin/python bench/simulate.py [--sizes 1000,10000,...] [--cut K]
                                       [--baseline-max N] [--repeats R]

The workload is 100 tasks per device (10 devices for 1k tasks, 10,000 for
1M), Poisson arrivals, an 11-stage AlexNet-like profile, every device
offloading at the same cut, four link classes, two BS workers.  The period
is set so that the BS is 90 % busy at every size, which keeps its queue
realistic (neither empty nor growing without bound).

The baseline is the simulator as it was before the fast rewrite: one heap
of every event, a ``Job`` and a ``Slice`` object per slice, the scheduler
driven through ``push``/``pop``/``finish``.  It runs up to
``--baseline-max`` tasks; where both run, their predictions must be equal
field by field (bit for bit), and the script stops otherwise.  Timings are
the best of ``--repeats`` runs of ``simulate`` alone (task generation is not
timed).  The table goes to stdout, the figures to
``bench/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile, StageProfile
from splitlab.schedule import Job, Scheduler, Slice, make_scheduler
from splitlab.simulate import TaskPrediction, simulate
from splitlab.workload import TaskSpec, generate_tasks

RESULTS = Path(__file__).parent / "results" / "simulate.json"
TASKS_PER_DEVICE = 100
WORKERS = 2
LOAD = 0.9

# (name, BS median seconds, output bytes); devices are 4x slower.
STAGES = (
    ("conv1", 0.00060, 65_536),
    ("pool1", 0.00010, 16_384),
    ("conv2", 0.00120, 49_152),
    ("pool2", 0.00005, 12_288),
    ("conv3", 0.00080, 24_576),
    ("conv4", 0.00100, 16_384),
    ("conv5", 0.00070, 16_384),
    ("pool3", 0.00002, 4_096),
    ("fc1", 0.00400, 16_384),
    ("fc2", 0.00250, 16_384),
    ("fc3", 0.00005, 40),
)
LINKS = (
    LinkSpec(latency_s=0.005, rate_bps=50e6),
    LinkSpec(latency_s=0.020, rate_bps=20e6),
    LinkSpec(latency_s=0.050, rate_bps=10e6),
    LinkSpec(latency_s=0.100, rate_bps=5e6),
)

_T = TypeVar("_T")


def node_profile(node: str, slowdown: float) -> NodeProfile:
    """The bench model's profile on a node ``slowdown`` times slower than the BS."""
    return NodeProfile(
        node=node,
        model="alexnet-like",
        input_bytes=12_288,
        stages=tuple(
            StageProfile(
                name=name,
                median_s=median_s * slowdown,
                p95_s=median_s * slowdown,
                output_bytes=size,
                param_bytes=0,
            )
            for name, median_s, size in STAGES
        ),
    )


# --- the baseline: the simulator before the rewrite, unchanged --------------


@dataclass(frozen=True, slots=True)
class _HeadResult:
    task: TaskSpec
    cut: int
    device_wait_s: float
    device_s: float
    head_end_s: float
    bs_arrival_s: float


def baseline_simulate(
    tasks: Iterable[TaskSpec],
    *,
    cuts: Mapping[str, int],
    device_profiles: Mapping[str, NodeProfile],
    bs_profile: NodeProfile,
    links: Mapping[str, LinkSpec],
    scheduler: str,
    workers: int,
) -> tuple[TaskPrediction, ...]:
    """The simulator as it was before the rewrite (one event heap, objects)."""
    queue = make_scheduler(scheduler)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")

    by_device: dict[str, list[TaskSpec]] = {}
    seen_ids: set[int] = set()
    for task in tasks:
        if task.task_id in seen_ids:
            raise ConfigError(f"task_id {task.task_id} appears more than once")
        seen_ids.add(task.task_id)
        by_device.setdefault(task.device, []).append(task)

    heads: list[_HeadResult] = []
    for device in sorted(by_device):
        heads.extend(
            _baseline_device(
                device,
                by_device[device],
                cut=_lookup(cuts, device),
                profile=_lookup(device_profiles, device),
                link=_lookup(links, device),
                num_stages=bs_profile.num_stages,
            )
        )

    ends_s = _baseline_base_station(
        heads, bs_profile=bs_profile, queue=queue, workers=workers
    )

    tails_s = [bs_profile.tail_s(cut) for cut in range(bs_profile.num_stages + 1)]
    predictions: list[TaskPrediction] = []
    for head in heads:
        task = head.task
        if head.cut == bs_profile.num_stages:
            transmission_s = bs_s = bs_wait_s = 0.0
            end_s = head.head_end_s
        else:
            transmission_s = head.bs_arrival_s - head.head_end_s
            bs_s = tails_s[head.cut]
            end_s = ends_s[task.task_id]
            bs_wait_s = end_s - head.bs_arrival_s - bs_s
        predictions.append(
            TaskPrediction(
                task_id=task.task_id,
                device=task.device,
                index=task.index,
                cut=head.cut,
                arrival_s=task.arrival_s,
                device_wait_s=head.device_wait_s,
                device_s=head.device_s,
                transmission_s=transmission_s,
                bs_wait_s=bs_wait_s,
                bs_s=bs_s,
                end_s=end_s,
            )
        )
    predictions.sort(key=lambda prediction: prediction.task_id)
    return tuple(predictions)


def _lookup(mapping: Mapping[str, _T], device: str) -> _T:
    return mapping[device]


def _baseline_device(
    device: str,
    tasks: list[TaskSpec],
    *,
    cut: int,
    profile: NodeProfile,
    link: LinkSpec,
    num_stages: int,
) -> list[_HeadResult]:
    offloads = cut < num_stages
    device_s = profile.head_s(cut)
    occupy_s = profile.cut_bytes(cut) * 8 / link.rate_bps if offloads else 0.0
    cpu_free_s = link_free_s = float("-inf")
    results: list[_HeadResult] = []
    for task in sorted(tasks, key=lambda task: (task.arrival_s, task.task_id)):
        start_s = max(task.arrival_s, cpu_free_s)
        head_end_s = start_s + device_s
        cpu_free_s = head_end_s

        bs_arrival_s = head_end_s
        if offloads:
            link_free_s = max(head_end_s, link_free_s) + occupy_s
            bs_arrival_s = link_free_s + link.latency_s

        results.append(
            _HeadResult(
                task=task,
                cut=cut,
                device_wait_s=start_s - task.arrival_s,
                device_s=device_s,
                head_end_s=head_end_s,
                bs_arrival_s=bs_arrival_s,
            )
        )
    return results


def _ready_order(item: Job | Slice) -> tuple[float, int]:
    job = item if isinstance(item, Job) else item.job
    return (job.release_s, job.task_id)


def _baseline_base_station(
    heads: list[_HeadResult],
    *,
    bs_profile: NodeProfile,
    queue: Scheduler,
    workers: int,
) -> dict[int, float]:
    stage_s = tuple(stage.median_s for stage in bs_profile.stages)
    sequence = itertools.count()
    events: list[tuple[float, int, Job | Slice]] = []
    for head in heads:
        if head.cut == bs_profile.num_stages:
            continue
        job = Job(
            task_id=head.task.task_id,
            device=head.task.device,
            release_s=head.bs_arrival_s,
            stage_s=stage_s[head.cut :],
        )
        events.append((head.bs_arrival_s, next(sequence), job))
    heapq.heapify(events)

    ends_s: dict[int, float] = {}
    idle = workers
    while events:
        now_s, _, item = heapq.heappop(events)
        ready = [item]
        while events and events[0][0] == now_s:
            ready.append(heapq.heappop(events)[2])
        if len(ready) > 1:
            ready.sort(key=_ready_order)
        for item in ready:
            if isinstance(item, Job):
                queue.push(item)
                continue
            idle += 1
            if queue.finish(item) is None:
                ends_s[item.job.task_id] = now_s

        while idle and (piece := queue.pop()) is not None:
            idle -= 1
            done_s = now_s + piece.duration_s
            heapq.heappush(events, (done_s, next(sequence), piece))
    return ends_s


# --- the measurement ---------------------------------------------------------


def best_time_s(
    run: Callable[[], tuple[TaskPrediction, ...]], repeats: int
) -> tuple[float, float, tuple[TaskPrediction, ...]]:
    """The least wall and CPU time of ``repeats`` calls of ``run``, and its result.

    The CPU time of this process is reported beside the wall time because
    the machine may be shared: it is what the wall time would be on an idle
    core.
    """
    best_wall_s = best_cpu_s = float("inf")
    result: tuple[TaskPrediction, ...] = ()
    for _ in range(repeats):
        wall_s, cpu_s = time.perf_counter(), time.process_time()
        result = run()
        best_cpu_s = min(best_cpu_s, time.process_time() - cpu_s)
        best_wall_s = min(best_wall_s, time.perf_counter() - wall_s)
    return best_wall_s, best_cpu_s, result


def main() -> None:
    """Run the bench and write its table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--schedulers", default="fcfs,rr")
    parser.add_argument("--cut", type=int, default=2)
    parser.add_argument("--baseline-max", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    bs_profile = node_profile("bs", 1.0)
    device_profile = node_profile("device", 4.0)
    tail_s = bs_profile.tail_s(args.cut)
    rows: list[dict[str, Any]] = []
    print(
        f"cut {args.cut} ({bs_profile.num_stages - args.cut} BS stages, "
        f"{tail_s * 1e3:.2f} ms), {WORKERS} workers, BS load {LOAD:.0%}"
    )
    print(
        f"{'tasks':>9} {'sched':>5} {'wall s':>8} {'cpu s':>8} "
        f"{'base wall':>9} {'base cpu':>9} {'cpu ratio':>9}"
    )
    for size in sizes:
        devices = [f"d{n:05d}" for n in range(size // TASKS_PER_DEVICE)]
        period_s = len(devices) * tail_s / (WORKERS * LOAD)
        tasks = generate_tasks(
            devices,
            tasks_per_device=TASKS_PER_DEVICE,
            period_s=period_s,
            arrivals="poisson",
            num_samples=10_000,
            seed=1,
        )
        kwargs: dict[str, Any] = {
            "cuts": dict.fromkeys(devices, args.cut),
            "device_profiles": dict.fromkeys(devices, device_profile),
            "bs_profile": bs_profile,
            "links": {d: LINKS[n % len(LINKS)] for n, d in enumerate(devices)},
            "workers": WORKERS,
        }
        for scheduler in args.schedulers.split(","):
            wall_s, cpu_s, fast = best_time_s(
                lambda s=scheduler, t=tasks, k=kwargs: simulate(t, scheduler=s, **k),
                args.repeats,
            )
            row: dict[str, Any] = {
                "tasks": size,
                "devices": len(devices),
                "scheduler": scheduler,
                "wall_s": round(wall_s, 3),
                "cpu_s": round(cpu_s, 3),
                "mean_delay_s": sum(p.delay_s for p in fast) / len(fast),
                "baseline_wall_s": None,
                "baseline_cpu_s": None,
                "cpu_speedup": None,
                "identical": None,
            }
            if size <= args.baseline_max:
                base_wall_s, base_cpu_s, slow = best_time_s(
                    lambda s=scheduler, t=tasks, k=kwargs: baseline_simulate(
                        t, scheduler=s, **k
                    ),
                    args.repeats,
                )
                if slow != fast:
                    raise SystemExit(f"{scheduler} at {size} tasks: results differ")
                del slow
                row.update(
                    baseline_wall_s=round(base_wall_s, 3),
                    baseline_cpu_s=round(base_cpu_s, 3),
                    cpu_speedup=round(base_cpu_s / cpu_s, 2),
                    identical=True,
                )
            del fast
            rows.append(row)
            print(
                f"{size:>9} {scheduler:>5} {wall_s:>8.3f} {cpu_s:>8.3f} "
                + " ".join(
                    f"{'-' if row[key] is None else row[key]:>9}"
                    for key in ("baseline_wall_s", "baseline_cpu_s", "cpu_speedup")
                )
            )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "bench": "simulate",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cut": args.cut,
                "bs_stages": bs_profile.num_stages - args.cut,
                "workers": WORKERS,
                "load": LOAD,
                "tasks_per_device": TASKS_PER_DEVICE,
                "repeats": args.repeats,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
