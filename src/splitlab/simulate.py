"""Discrete-event simulation of a scheme: the delay every task is predicted to have.

The simulation is exact and deterministic: every stage takes its profiled
median time, links have no jitter.  It follows each task through the three
resources it uses:

1. **The device's CPU.**  A device runs its own tasks' heads one at a time, in
   arrival order; a task whose device is busy waits (``device_wait_s``).
2. **The device's link.**  When the head is done the cut tensor is put on the
   link, which is FIFO: it waits for the link to be free, occupies it for
   ``size * 8 / rate`` seconds and arrives ``latency`` later.
   ``transmission_s`` runs from the end of the head to the arrival at the BS,
   waiting for the link included.
3. **The base station.**  The job enters the BS scheduler when it arrives;
   ``workers`` workers take slices from it.  ``bs_wait_s`` is the time at the
   BS not spent running the task's own stages.

A task whose cut is ``L`` runs entirely on its device and never uses the link
or the BS.  The prediction ends when the BS finishes the last stage; the
result's way back to the device is not modelled, as in the delay model of the
design.

Devices and links are independent of each other, so they are computed per
device in one pass; only the BS, shared by every device, needs an event
queue.  Events are ordered by time then by a sequence number.  All the events
of one instant are applied before any worker takes new work, and the jobs
that become ready at that instant enter the queue in ``(release_s, task_id)``
order, so simultaneous arrivals are ordered by the scheduler, not by chance.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile
from splitlab.schedule import Job, Scheduler, Slice, make_scheduler
from splitlab.workload import TaskSpec

__all__ = ["TaskPrediction", "simulate"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TaskPrediction:
    """The predicted timeline of one task, broken into its parts.

    ``arrival_s + device_wait_s + device_s + transmission_s + bs_wait_s +
    bs_s == end_s``.

    Attributes
    ----------
    task_id, device, index:
        Which task (see :class:`splitlab.workload.TaskSpec`).
    cut:
        The cut ``k`` the task ran with.
    arrival_s:
        When the task was generated, in seconds.
    device_wait_s:
        Time spent waiting for the device's CPU, in seconds.
    device_s:
        Time of stages ``1..k`` on the device, in seconds.
    transmission_s:
        From the end of the head to the arrival at the BS, waiting for the
        link included, in seconds; zero for a local-only task.
    bs_wait_s:
        Time at the BS not spent running the task's stages (queueing, and
        waiting between round-robin slices), in seconds.
    bs_s:
        Time of stages ``k+1..L`` on the BS, in seconds.
    end_s:
        When the last stage finished, in seconds.
    """

    task_id: int
    device: str
    index: int
    cut: int
    arrival_s: float
    device_wait_s: float
    device_s: float
    transmission_s: float
    bs_wait_s: float
    bs_s: float
    end_s: float

    @property
    def delay_s(self) -> float:
        """End-to-end delay of the task, ``end_s - arrival_s``, in seconds."""
        return self.end_s - self.arrival_s


@dataclass(frozen=True, slots=True)
class _HeadResult:
    """What the device and link part of the simulation found for one task."""

    task: TaskSpec
    cut: int
    device_wait_s: float
    device_s: float
    head_end_s: float
    bs_arrival_s: float


def simulate(
    tasks: Iterable[TaskSpec],
    *,
    cuts: Mapping[str, int],
    device_profiles: Mapping[str, NodeProfile],
    bs_profile: NodeProfile,
    links: Mapping[str, LinkSpec],
    scheduler: str,
    workers: int,
) -> tuple[TaskPrediction, ...]:
    """Predict every task's timeline under a scheme, a scheduler and a BS size.

    Parameters
    ----------
    tasks:
        The workload.  Their order does not matter.
    cuts:
        The cut ``k`` of every device that has tasks.
    device_profiles:
        The profile of every device that has tasks.
    bs_profile:
        The profile of the base station; it sets ``L``.
    links:
        The link of every device that has tasks.
    scheduler:
        The BS scheduler's name (see :data:`splitlab.schedule.SCHEDULERS`).
    workers:
        How many stages the BS runs at the same time.

    Returns
    -------
    tuple[TaskPrediction, ...]
        One prediction per task, sorted by ``task_id``.

    Raises
    ------
    ConfigError
        If a device lacks a cut, profile or link, a cut is out of range, a
        profile has another number of stages than the BS's, a link's rate is
        not positive, task ids repeat, ``workers`` is below one or the
        scheduler is unknown.
    """
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
            _run_device(
                device,
                by_device[device],
                cut=_lookup(cuts, device, "cut"),
                profile=_lookup(device_profiles, device, "profile"),
                link=_lookup(links, device, "link"),
                num_stages=bs_profile.num_stages,
            )
        )

    ends_s = _run_base_station(
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
    logger.debug(
        "simulated %d tasks on %d devices with %s on %d workers",
        len(predictions),
        len(by_device),
        scheduler,
        workers,
    )
    return tuple(predictions)


def _lookup(mapping: Mapping[str, _T], device: str, what: str) -> _T:
    try:
        return mapping[device]
    except KeyError:
        raise ConfigError(f"device {device!r} has tasks but no {what}") from None


def _run_device(
    device: str,
    tasks: list[TaskSpec],
    *,
    cut: int,
    profile: NodeProfile,
    link: LinkSpec,
    num_stages: int,
) -> list[_HeadResult]:
    """Run one device's heads on its CPU and send their outputs on its link."""
    if profile.num_stages != num_stages:
        raise ConfigError(
            f"device {device!r} profile has {profile.num_stages} stages, "
            f"the BS profile has {num_stages}"
        )
    if not 0 <= cut <= num_stages:
        raise ConfigError(f"device {device!r} cut {cut} is outside 0..{num_stages}")
    offloads = cut < num_stages
    if offloads and link.rate_bps <= 0:
        raise ConfigError(
            f"device {device!r} link rate_bps must be positive, got {link.rate_bps}"
        )

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


def _run_base_station(
    heads: list[_HeadResult],
    *,
    bs_profile: NodeProfile,
    queue: Scheduler,
    workers: int,
) -> dict[int, float]:
    """Run the offloaded jobs through the scheduler; return each job's end."""
    stage_s = tuple(stage.median_s for stage in bs_profile.stages)
    sequence = itertools.count()
    # An event is a job arriving or a slice ending: (time, sequence, item).
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
        # Apply everything that happens at this instant before dispatching.
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
