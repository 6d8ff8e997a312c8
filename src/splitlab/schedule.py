"""Base-station schedulers: which offloaded job runs next, and for how long.

The base station keeps the jobs whose tails are still to run in a queue, and
its workers take work from it one *slice* at a time.  A scheduler owns that
queue.  The same classes serve the real BS server (its worker threads call
them under a lock) and the simulator, so they are pure: no clocks, no
threads, no randomness.  Times in a :class:`Job` are estimates taken from the
BS profile; a scheduler uses them only to order the queue.

Every policy is two things: a *rank*, the key that orders the queue (least
first, equal keys in the order they were pushed), and whether it is
*preemptive*.  A non-preemptive policy hands out
all of a job's remaining stages in one slice; a preemptive one hands out one
stage, after which :meth:`Scheduler.finish` puts the job back in the queue and
the best-ranked job runs next.  Preemption therefore happens only at stage
boundaries: a stage that has started always runs to its end.

Policies
--------
``fcfs``
    First come, first served: rank ``(release_s, task_id)``, non-preemptive.
``sjf``
    Shortest job first: rank ``(remaining_s, release_s, task_id)``,
    non-preemptive.
``srpt``
    Shortest remaining processing time: the rank of ``sjf``, preemptive, so
    after every stage the job with the least remaining BS work runs.
``rr``
    Round robin with a quantum of one stage: every rank is equal, so the
    queue is in push order and a job that has run one stage goes to the
    back of it.
``edf``
    Earliest deadline first: rank ``(deadline_s, release_s, task_id)``, a job
    without a deadline counting as ``+inf`` (after every job that has one,
    first come first served among themselves); preemptive, so a job arriving
    with an earlier deadline takes the next free worker from a running job
    at that job's next stage boundary.
``priority``
    Static priority: rank ``(priority, release_s, task_id)``, a lower number
    first and first come first served within a priority; non-preemptive.

Ties are broken by ``(release_s, task_id)``.  Round robin keeps its queue in
the order jobs were pushed, so a caller that enqueues several jobs at the
same instant pushes them in ``(release_s, task_id)`` order, as the simulator
does.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from splitlab.errors import ConfigError

__all__ = [
    "SCHEDULERS",
    "EdfScheduler",
    "FcfsScheduler",
    "Job",
    "PriorityScheduler",
    "RoundRobinScheduler",
    "Scheduler",
    "SjfScheduler",
    "Slice",
    "SrptScheduler",
    "make_scheduler",
]

Rank = tuple[float, ...]
"""A queue key; the least key runs first."""


@dataclass(frozen=True, slots=True)
class Job:
    """The BS part of one task: the stages after its cut.

    Attributes
    ----------
    task_id:
        The task's id, unique within the run.
    device:
        The device the task came from.
    release_s:
        When the job became available at the BS, in seconds.
    stage_s:
        Estimated BS time of each stage still to run after the cut, in
        execution order (from the BS profile), in seconds.
    done:
        How many of ``stage_s`` have already run.
    deadline_s:
        The task's absolute deadline, in seconds from the run's start, or
        ``None`` when it has none.
    priority:
        The static priority of the task's device; a lower number is served
        first by the ``priority`` scheduler.
    """

    task_id: int
    device: str
    release_s: float
    stage_s: tuple[float, ...]
    done: int = 0
    deadline_s: float | None = None
    priority: int = 0

    @property
    def remaining_s(self) -> float:
        """Estimated BS time of the stages not run yet, in seconds."""
        return sum(self.stage_s[self.done :])

    @property
    def finished(self) -> bool:
        """Whether every stage has run."""
        return self.done >= len(self.stage_s)


@dataclass(frozen=True, slots=True)
class Slice:
    """A piece of work handed to one worker: the job's next ``stages`` stages.

    Attributes
    ----------
    job:
        The job as it was when the slice was taken from the queue.
    stages:
        How many of the job's stages to run now, starting at ``job.done``.
    """

    job: Job
    stages: int

    @property
    def duration_s(self) -> float:
        """Estimated BS time of the slice's stages, in seconds."""
        start = self.job.done
        return sum(self.job.stage_s[start : start + self.stages])


class Scheduler(ABC):
    """A BS queue policy.

    A worker that is free calls :meth:`pop`, runs the slice it gets, then
    calls :meth:`finish`, which puts the job back in the queue when stages
    remain.  New jobs enter with :meth:`push`.  A subclass defines the
    policy with :meth:`rank` and :attr:`preemptive`.

    Attributes
    ----------
    name:
        The registry name.
    preemptive:
        ``True`` when a slice is one stage (the job goes back to the queue
        after it), ``False`` when a slice is every remaining stage.
    """

    name: ClassVar[str]
    preemptive: ClassVar[bool]

    def __init__(self) -> None:
        self._heap: list[tuple[Rank, int, Job]] = []
        self._order = itertools.count()

    @staticmethod
    @abstractmethod
    def rank(
        release_s: float,
        task_id: int,
        remaining_s: float,
        deadline_s: float | None,
        priority: int,
    ) -> Rank:
        """The queue key of a job; the least key is served first.

        Parameters
        ----------
        release_s, task_id, deadline_s, priority:
            The job's fields (see :class:`Job`).
        remaining_s:
            The job's :attr:`Job.remaining_s` when it is pushed.

        Returns
        -------
        tuple[float, ...]
            The job's key.  Jobs with equal keys leave the queue in the
            order they were pushed.
        """

    def push(self, job: Job) -> None:
        """Add a job that has stages left to run.

        Raises
        ------
        ValueError
            If the job has no stage left.
        """
        if job.finished:
            raise ValueError(
                f"task {job.task_id} has no stage left to run at the BS "
                f"({job.done} of {len(job.stage_s)} done)"
            )
        key = self.rank(
            job.release_s, job.task_id, job.remaining_s, job.deadline_s, job.priority
        )
        heapq.heappush(self._heap, (key, next(self._order), job))

    def pop(self) -> Slice | None:
        """Take the next slice to run, or ``None`` when the queue is empty."""
        if not self._heap:
            return None
        job = heapq.heappop(self._heap)[-1]
        stages = 1 if self.preemptive else len(job.stage_s) - job.done
        return Slice(job=job, stages=stages)

    def __len__(self) -> int:
        """Number of jobs waiting in the queue (not the ones running)."""
        return len(self._heap)

    def finish(self, piece: Slice) -> Job | None:
        """Record that ``piece`` has run.

        Parameters
        ----------
        piece:
            A slice returned by :meth:`pop`.

        Returns
        -------
        Job | None
            The advanced job, already queued again, when it has stages left;
            ``None`` when the job is finished.

        Raises
        ------
        ValueError
            If the slice runs past the job's last stage.
        """
        job = piece.job
        if piece.stages < 1 or job.done + piece.stages > len(job.stage_s):
            raise ValueError(
                f"slice of {piece.stages} stages does not fit task {job.task_id}, "
                f"which has run {job.done} of {len(job.stage_s)} stages"
            )
        advanced = dataclasses.replace(job, done=job.done + piece.stages)
        if advanced.finished:
            return None
        self.push(advanced)
        return advanced


class FcfsScheduler(Scheduler):
    """First come, first served: release order, all remaining stages at once."""

    name: ClassVar[str] = "fcfs"
    preemptive: ClassVar[bool] = False

    @staticmethod
    def rank(
        release_s: float,
        task_id: int,
        remaining_s: float,
        deadline_s: float | None,
        priority: int,
    ) -> Rank:
        """``(release_s, task_id)``: the earliest released job first."""
        return (release_s, task_id)


class SjfScheduler(Scheduler):
    """Shortest job first: least remaining BS work, then release order."""

    name: ClassVar[str] = "sjf"
    preemptive: ClassVar[bool] = False

    @staticmethod
    def rank(
        release_s: float,
        task_id: int,
        remaining_s: float,
        deadline_s: float | None,
        priority: int,
    ) -> Rank:
        """``(remaining_s, release_s, task_id)``: the least work first."""
        return (remaining_s, release_s, task_id)


class SrptScheduler(SjfScheduler):
    """Shortest remaining BS work first, re-chosen after every stage.

    The same order as :class:`SjfScheduler`, but a job runs one stage and then
    goes back to the queue, so a shorter arrival takes over at the next stage
    boundary.
    """

    name: ClassVar[str] = "srpt"
    preemptive: ClassVar[bool] = True


class RoundRobinScheduler(Scheduler):
    """Round robin with a quantum of one stage, in the order jobs were pushed."""

    name: ClassVar[str] = "rr"
    preemptive: ClassVar[bool] = True

    @staticmethod
    def rank(
        release_s: float,
        task_id: int,
        remaining_s: float,
        deadline_s: float | None,
        priority: int,
    ) -> Rank:
        """``()``: every job ties, so the queue is in push order."""
        return ()


class EdfScheduler(Scheduler):
    """Earliest absolute deadline first, re-chosen after every stage."""

    name: ClassVar[str] = "edf"
    preemptive: ClassVar[bool] = True

    @staticmethod
    def rank(
        release_s: float,
        task_id: int,
        remaining_s: float,
        deadline_s: float | None,
        priority: int,
    ) -> Rank:
        """``(deadline_s, release_s, task_id)``; no deadline counts as ``+inf``."""
        return (math.inf if deadline_s is None else deadline_s, release_s, task_id)


class PriorityScheduler(Scheduler):
    """Static priority per device, lower first; release order within one."""

    name: ClassVar[str] = "priority"
    preemptive: ClassVar[bool] = False

    @staticmethod
    def rank(
        release_s: float,
        task_id: int,
        remaining_s: float,
        deadline_s: float | None,
        priority: int,
    ) -> Rank:
        """``(priority, release_s, task_id)``: the lowest number first."""
        return (priority, release_s, task_id)


SCHEDULERS: Mapping[str, type[Scheduler]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            FcfsScheduler,
            SjfScheduler,
            SrptScheduler,
            RoundRobinScheduler,
            EdfScheduler,
            PriorityScheduler,
        )
    }
)
"""Every scheduler by its name."""


def make_scheduler(name: str) -> Scheduler:
    """Build an empty scheduler from its registry name.

    Parameters
    ----------
    name:
        One of the keys of :data:`SCHEDULERS`.

    Raises
    ------
    ConfigError
        If no scheduler has that name.
    """
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        known = ", ".join(sorted(SCHEDULERS))
        raise ConfigError(f"unknown scheduler {name!r}; known: {known}") from None
    return cls()
