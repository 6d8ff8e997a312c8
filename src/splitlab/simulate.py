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
design (``docs/delay-model.md``).

Devices and links are independent of each other, so they are computed per
device in one pass; only the BS, shared by every device, needs an event
loop.  All the events of one instant (jobs arriving, slices ending) are
applied before any worker takes new work, and the jobs that become ready at
that instant enter the queue in ``(release_s, task_id)`` order, so
simultaneous arrivals are ordered by the scheduler, not by chance.

The BS loop orders its queue with the scheduler's own
:meth:`splitlab.schedule.Scheduler.rank` and slices as the scheduler's
``preemptive`` flag says, so it makes exactly the choices the real BS makes
with the same class.  For speed it works on plain lists indexed by job and
keeps only two heaps: the queue, and the slices running on the workers (at
most ``workers`` of them); arrivals are read from a list sorted once.  The
per-task records are built at the end.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TypeVar

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile
from splitlab.schedule import Rank, Scheduler, make_scheduler
from splitlab.workload import TaskSpec

__all__ = ["DelaySummary", "TaskPrediction", "simulate", "summarize"]

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
        waiting between the slices of a preemptive scheduler), in seconds.
    bs_s:
        Time of stages ``k+1..L`` on the BS, in seconds.
    end_s:
        When the last stage finished, in seconds.
    deadline_s:
        The task's absolute deadline, in seconds, or ``None``.
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
    deadline_s: float | None = None

    @property
    def delay_s(self) -> float:
        """End-to-end delay of the task, ``end_s - arrival_s``, in seconds."""
        return self.end_s - self.arrival_s

    @property
    def met_deadline(self) -> bool | None:
        """Whether ``end_s <= deadline_s``; ``None`` without a deadline."""
        if self.deadline_s is None:
            return None
        return self.end_s <= self.deadline_s


def simulate(
    tasks: Iterable[TaskSpec],
    *,
    cuts: Mapping[str, int],
    device_profiles: Mapping[str, NodeProfile],
    bs_profile: NodeProfile,
    links: Mapping[str, LinkSpec],
    scheduler: str,
    workers: int,
    priorities: Mapping[str, int] | None = None,
) -> tuple[TaskPrediction, ...]:
    """Predict every task's timeline under a scheme, a scheduler and a BS size.

    Parameters
    ----------
    tasks:
        The workload.  Their order does not matter.  A task's ``deadline_s``
        is handed to the BS scheduler (``edf`` ranks by it) and copied into
        its prediction.
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
    priorities:
        The static priority of each device's jobs at the BS (lower first,
        used by the ``priority`` scheduler); a device left out has 0.

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
    policy = make_scheduler(scheduler)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")

    # The cyclic garbage collector would walk every live object many times
    # while millions of records are made; none of them is part of a cycle.
    with _gc_paused():
        predictions = _simulate(
            tasks,
            cuts=cuts,
            device_profiles=device_profiles,
            bs_profile=bs_profile,
            links=links,
            policy=policy,
            workers=workers,
            priorities=priorities or {},
        )
    logger.debug(
        "simulated %d tasks with %s on %d workers",
        len(predictions),
        scheduler,
        workers,
    )
    return predictions


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _simulate(
    tasks: Iterable[TaskSpec],
    *,
    cuts: Mapping[str, int],
    device_profiles: Mapping[str, NodeProfile],
    bs_profile: NodeProfile,
    links: Mapping[str, LinkSpec],
    policy: Scheduler,
    workers: int,
    priorities: Mapping[str, int],
) -> tuple[TaskPrediction, ...]:
    """:func:`simulate` after its arguments are checked."""
    # Tasks in task_id order: position i in every list below is one task.
    ordered = sorted(tasks, key=attrgetter("task_id"))
    task_ids = [task.task_id for task in ordered]
    count = len(ordered)
    if len(set(task_ids)) != count:
        repeated = min(t for t, n in collections.Counter(task_ids).items() if n > 1)
        raise ConfigError(f"task_id {repeated} appears more than once")
    by_device: dict[str, list[int]] = {}
    for i, task in enumerate(ordered):
        by_device.setdefault(task.device, []).append(i)

    # Devices and links, one device at a time.
    num_stages = bs_profile.num_stages
    task_cut = [0] * count
    device_wait_s = [0.0] * count
    device_s = [0.0] * count
    head_end_s = [0.0] * count
    bs_arrival_s = [0.0] * count
    priority = [0] * count
    arrival_s = [task.arrival_s for task in ordered]
    for device in sorted(by_device):
        _run_device(
            device,
            by_device[device],
            arrival_s,
            cut=_lookup(cuts, device, "cut"),
            profile=_lookup(device_profiles, device, "profile"),
            link=_lookup(links, device, "link"),
            num_stages=num_stages,
            out_cut=task_cut,
            out_wait_s=device_wait_s,
            out_device_s=device_s,
            out_head_end_s=head_end_s,
            out_bs_arrival_s=bs_arrival_s,
        )
        device_priority = priorities.get(device, 0)
        for i in by_device[device]:
            priority[i] = device_priority

    # The base station, over the offloaded tasks in (release_s, task_id) order.
    deadline_s = [task.deadline_s for task in ordered]
    offloaded = [i for i in range(count) if task_cut[i] < num_stages]
    offloaded.sort(key=bs_arrival_s.__getitem__)
    bs_ends_s = _run_base_station(
        [bs_arrival_s[i] for i in offloaded],
        [task_ids[i] for i in offloaded],
        [task_cut[i] for i in offloaded],
        [deadline_s[i] for i in offloaded],
        [priority[i] for i in offloaded],
        stage_s=tuple(stage.median_s for stage in bs_profile.stages),
        policy=policy,
        workers=workers,
    )

    # The records, in task_id order; a local-only task keeps zeros.
    end_s = head_end_s.copy()
    transmission_s = [0.0] * count
    bs_wait_s = [0.0] * count
    bs_s = [0.0] * count
    tails_s = [bs_profile.tail_s(cut) for cut in range(num_stages + 1)]
    for i, bs_end_s in zip(offloaded, bs_ends_s, strict=True):
        end_s[i] = bs_end_s
        transmission_s[i] = bs_arrival_s[i] - head_end_s[i]
        bs_s[i] = tail_s = tails_s[task_cut[i]]
        bs_wait_s[i] = bs_end_s - bs_arrival_s[i] - tail_s
    return tuple(
        map(
            TaskPrediction,
            task_ids,
            [task.device for task in ordered],
            [task.index for task in ordered],
            task_cut,
            arrival_s,
            device_wait_s,
            device_s,
            transmission_s,
            bs_wait_s,
            bs_s,
            end_s,
            deadline_s,
        )
    )


def _lookup(mapping: Mapping[str, _T], device: str, what: str) -> _T:
    try:
        return mapping[device]
    except KeyError:
        raise ConfigError(f"device {device!r} has tasks but no {what}") from None


def _run_device(
    device: str,
    indices: list[int],
    arrival_s: Sequence[float],
    *,
    cut: int,
    profile: NodeProfile,
    link: LinkSpec,
    num_stages: int,
    out_cut: list[int],
    out_wait_s: list[float],
    out_device_s: list[float],
    out_head_end_s: list[float],
    out_bs_arrival_s: list[float],
) -> None:
    """Run one device's heads on its CPU and send their outputs on its link.

    ``indices`` are the device's tasks in task_id order; the results go to
    the ``out_`` lists at the same indices.
    """
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

    head_s = profile.head_s(cut)
    occupy_s = profile.cut_bytes(cut) * 8 / link.rate_bps if offloads else 0.0
    latency_s = link.latency_s
    cpu_free_s = link_free_s = -math.inf
    # A stable sort of task_id-ordered indices: (arrival_s, task_id) order.
    for i in sorted(indices, key=arrival_s.__getitem__):
        at_s = arrival_s[i]
        start_s = cpu_free_s if cpu_free_s > at_s else at_s
        head_end_s = start_s + head_s
        cpu_free_s = head_end_s

        bs_arrival_s = head_end_s
        if offloads:
            link_free_s = max(head_end_s, link_free_s) + occupy_s
            bs_arrival_s = link_free_s + latency_s

        out_cut[i] = cut
        out_wait_s[i] = start_s - at_s
        out_device_s[i] = head_s
        out_head_end_s[i] = head_end_s
        out_bs_arrival_s[i] = bs_arrival_s


def _run_base_station(
    release_s: list[float],
    task_ids: list[int],
    first_stage: list[int],
    deadlines_s: list[float | None],
    priorities: list[int],
    *,
    stage_s: tuple[float, ...],
    policy: Scheduler,
    workers: int,
) -> list[float]:
    """Run the offloaded jobs through the policy; return each job's end.

    Job ``j`` is described by the ``j``-th item of every list, and the jobs
    come in ``(release_s, task_id)`` order, so comparing two indices
    compares those pairs.  ``first_stage[j]`` is the job's cut.
    """
    num_stages = len(stage_s)
    # remaining_s[k]: BS time of stages k+1..L, summed as Job.remaining_s does.
    remaining_s = [sum(stage_s[k:]) for k in range(num_stages + 1)]
    rank = policy.rank
    preemptive = policy.preemptive
    count = len(release_s)
    next_stage = list(first_stage)
    ends_s = [0.0] * count

    heappush = heapq.heappush
    heappop = heapq.heappop
    # A queued job: (rank, push count, j), so equal ranks keep push order.
    queue: list[tuple[Rank, int, int]] = []
    # A slice on a worker: (end_s, j); a tie on end_s goes to the lower j.
    running: list[tuple[float, int]] = []
    # The next arrival is release_s[arrived]; +inf once every job has come.
    arrivals_s = [*release_s, math.inf]
    pushes = 0
    idle = workers
    arrived = 0
    while arrived < count or running:
        now_s = arrivals_s[arrived]
        if running and running[0][0] <= now_s:
            now_s = running[0][0]

        # Apply everything that happens at this instant before dispatching.
        ready: list[int] = []
        while arrivals_s[arrived] == now_s:
            ready.append(arrived)
            arrived += 1
        returned = False
        while running and running[0][0] == now_s:
            j = heappop(running)[1]
            idle += 1
            if next_stage[j] == num_stages:
                ends_s[j] = now_s
            else:
                ready.append(j)
                returned = True
        if returned and len(ready) > 1:
            ready.sort()
        for j in ready:
            key = rank(
                release_s[j],
                task_ids[j],
                remaining_s[next_stage[j]],
                deadlines_s[j],
                priorities[j],
            )
            heappush(queue, (key, pushes, j))
            pushes += 1

        while idle and queue:
            j = heappop(queue)[2]
            idle -= 1
            stage = next_stage[j]
            if preemptive:
                next_stage[j] = stage + 1
                heappush(running, (now_s + stage_s[stage], j))
            else:
                next_stage[j] = num_stages
                heappush(running, (now_s + remaining_s[stage], j))
    return ends_s


@dataclass(frozen=True, slots=True)
class DelaySummary:
    """The objectives of the delay model over a set of predicted tasks.

    Attributes
    ----------
    tasks:
        How many tasks.
    total_delay_s, mean_delay_s, max_delay_s:
        Sum, mean and largest end-to-end delay, in seconds.
    delay_variance_s2:
        Population variance of the delays, in seconds squared.
    deadline_tasks:
        How many tasks have a deadline.
    missed_deadlines:
        How many of those ended after their deadline.
    """

    tasks: int
    total_delay_s: float
    mean_delay_s: float
    delay_variance_s2: float
    max_delay_s: float
    deadline_tasks: int
    missed_deadlines: int


def summarize(predictions: Sequence[TaskPrediction]) -> DelaySummary:
    """Reduce predictions to the objectives of the delay model.

    Sums use :func:`math.fsum`, so the figures do not depend on the order of
    ``predictions``.  Without predictions every figure is zero.
    """
    delays_s = [prediction.delay_s for prediction in predictions]
    count = len(delays_s)
    total_s = math.fsum(delays_s)
    mean_s = total_s / count if count else 0.0
    variance_s2 = (
        math.fsum((delay_s - mean_s) ** 2 for delay_s in delays_s) / count
        if count
        else 0.0
    )
    met = [p.met_deadline for p in predictions if p.deadline_s is not None]
    return DelaySummary(
        tasks=count,
        total_delay_s=total_s,
        mean_delay_s=mean_s,
        delay_variance_s2=variance_s2,
        max_delay_s=max(delays_s, default=0.0),
        deadline_tasks=len(met),
        missed_deadlines=met.count(False),
    )
