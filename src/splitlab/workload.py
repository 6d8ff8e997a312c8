"""Workloads: when each device generates its tasks.

Arrivals are periodic (one task every ``period_s``) or Poisson (exponential
gaps of mean ``period_s``), with a seeded generator per device so that a
scenario and a seed always produce the same tasks.
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
    """

    task_id: int
    device: str
    index: int
    arrival_s: float
    sample: int


def generate_tasks(
    devices: Sequence[str],
    *,
    tasks_per_device: int,
    period_s: float,
    arrivals: Arrivals,
    num_samples: int,
    seed: int,
) -> tuple[TaskSpec, ...]:
    """Generate every device's tasks, ordered by arrival time then task id.

    Each device's first task arrives at a seeded offset in ``[0, period_s)`` so
    that periodic devices do not all fire at the same instant.  Samples are
    drawn without replacement where the data set is large enough.
    """
    if tasks_per_device < 1:
        raise ValueError(f"tasks_per_device must be at least 1, got {tasks_per_device}")
    if period_s <= 0:
        raise ValueError(f"period_s must be positive, got {period_s}")
    if num_samples < 1:
        raise ValueError(f"the data set has no samples ({num_samples})")

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
                )
            )
            if arrivals == "poisson":
                at_s += rng.expovariate(1.0 / period_s)
            else:
                at_s += period_s
    return tuple(sorted(tasks, key=lambda task: (task.arrival_s, task.task_id)))
