"""Workloads: when each device generates its tasks.

Arrivals are periodic (one task every ``period_s``) or Poisson (exponential
gaps of mean ``period_s``), with a seeded generator per device so that a
scenario and a seed always produce the same tasks.  A task may carry an
absolute deadline: its arrival plus a relative deadline common to the run.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Arrivals = Literal["periodic", "poisson"]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One inference request, before it runs.

    Attributes
    ----------
    task_id:
        Unique within the run.
    device:
        The device that generates the task.
    index:
        The task's position among its device's tasks (0-based).
    arrival_s:
        When the task is generated, in seconds after the run's start.
    sample:
        The index of the input sample in the data set.
    deadline_s:
        When the task should have finished, in seconds after the run's start
        (absolute), or ``None`` when it has no deadline.
    """

    task_id: int
    device: str
    index: int
    arrival_s: float
    sample: int
    deadline_s: float | None = None


def generate_tasks(
    devices: Sequence[str],
    *,
    tasks_per_device: int,
    period_s: float,
    arrivals: Arrivals,
    num_samples: int,
    seed: int,
    relative_deadline_s: float | None = None,
) -> tuple[TaskSpec, ...]:
    """Generate every device's tasks, ordered by arrival time then task id.

    Each device's first task arrives at a seeded offset in ``[0, period_s)`` so
    that periodic devices do not all fire at the same instant.  Samples are
    drawn without replacement where the data set is large enough.

    Parameters
    ----------
    devices:
        The devices' names; the task ids follow this order.
    tasks_per_device:
        How many tasks each device generates.
    period_s:
        The gap between a device's tasks (periodic), or its mean (Poisson).
    arrivals:
        ``"periodic"`` or ``"poisson"``.
    num_samples:
        The size of the data set the samples are drawn from.
    seed:
        Seeds the samples and every device's arrivals.
    relative_deadline_s:
        When given, every task's ``deadline_s`` is its ``arrival_s`` plus
        this many seconds; otherwise tasks have no deadline.

    Raises
    ------
    ValueError
        If ``tasks_per_device`` is below one, ``period_s`` or
        ``relative_deadline_s`` is not positive, or the data set is empty.
    """
    if tasks_per_device < 1:
        raise ValueError(f"tasks_per_device must be at least 1, got {tasks_per_device}")
    if period_s <= 0:
        raise ValueError(f"period_s must be positive, got {period_s}")
    if num_samples < 1:
        raise ValueError(f"the data set has no samples ({num_samples})")
    if relative_deadline_s is not None and relative_deadline_s <= 0:
        raise ValueError(
            f"relative_deadline_s must be positive, got {relative_deadline_s}"
        )

    sampler = random.Random(seed)
    population = range(num_samples)
    total = tasks_per_device * len(devices)
    if total <= num_samples:
        samples = sampler.sample(population, total)
    else:
        samples = [sampler.randrange(num_samples) for _ in range(total)]

    tasks: list[TaskSpec] = []
    for position, device in enumerate(devices):
        # A per-device stream keeps one device's arrivals unchanged when
        # another device is added to the scenario.
        rng = random.Random(seed * 1_000_003 + zlib.crc32(device.encode()))
        at_s = rng.uniform(0.0, period_s)
        for index in range(tasks_per_device):
            tasks.append(
                TaskSpec(
                    task_id=position * tasks_per_device + index,
                    device=device,
                    index=index,
                    arrival_s=at_s,
                    sample=samples[position * tasks_per_device + index],
                    deadline_s=(
                        None
                        if relative_deadline_s is None
                        else at_s + relative_deadline_s
                    ),
                )
            )
            if arrivals == "poisson":
                at_s += rng.expovariate(1.0 / period_s)
            else:
                at_s += period_s
    return tuple(sorted(tasks, key=lambda task: (task.arrival_s, task.task_id)))
