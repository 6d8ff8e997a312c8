"""Base-station schedulers: which offloaded job runs next, and for how long.

The base station keeps the jobs whose tails are still to run in a queue, and
its workers take work from it one *slice* at a time.  A scheduler owns that
queue.  The same classes serve the real BS server (its worker threads call
them under a lock) and the simulator, so they are pure: no clocks, no
threads, no randomness.  Times in a :class:`Job` are estimates taken from the
BS profile; a scheduler uses them only to order the queue.

Policies
--------
``fcfs``
    First come, first served: release order, a job runs all its stages.
``sjf``
    Shortest job first: least remaining BS work first, non-preemptive.
``rr``
    Round robin with a quantum of one stage: a job that has run one stage
    goes to the back of the queue.

Ties are broken by ``(release_s, task_id)``.  Round robin keeps its queue in
the order jobs were pushed, so a caller that enqueues several jobs at the
same instant pushes them in ``(release_s, task_id)`` order, as the simulator
does.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from splitlab.errors import ConfigError

__all__ = [
    "SCHEDULERS",
    "FcfsScheduler",
    "Job",
    "RoundRobinScheduler",
    "Scheduler",
    "SjfScheduler",
    "Slice",
    "make_scheduler",
]


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
    """

    task_id: int
    device: str
    release_s: float
    stage_s: tuple[float, ...]
    done: int = 0

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
    remain.  New jobs enter with :meth:`push`.
    """

    name: ClassVar[str]

    @abstractmethod
    def push(self, job: Job) -> None:
        """Add a job that has stages left to run.

        Raises
        ------
        ValueError
            If the job has no stage left.
        """

    @abstractmethod
    def pop(self) -> Slice | None:
        """Take the next slice to run, or ``None`` when the queue is empty."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of jobs waiting in the queue (not the ones running)."""

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
        advanced = Job(
            task_id=job.task_id,
            device=job.device,
            release_s=job.release_s,
            stage_s=job.stage_s,
            done=job.done + piece.stages,
        )
        if advanced.finished:
            return None
        self.push(advanced)
        return advanced


def _check_runnable(job: Job) -> None:
    if job.finished:
        raise ValueError(
            f"task {job.task_id} has no stage left to run at the BS "
            f"({job.done} of {len(job.stage_s)} done)"
        )


class FcfsScheduler(Scheduler):
    """First come, first served: release order, all remaining stages at once."""

    name: ClassVar[str] = "fcfs"

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Job]] = []
        self._order = itertools.count()

    def push(self, job: Job) -> None:
        """Queue ``job`` behind every job released before it."""
        _check_runnable(job)
        entry = (job.release_s, job.task_id, next(self._order), job)
        heapq.heappush(self._heap, entry)

    def pop(self) -> Slice | None:
        """Take the earliest released job, to run to its end."""
        if not self._heap:
            return None
        job = heapq.heappop(self._heap)[-1]
        return Slice(job=job, stages=len(job.stage_s) - job.done)

    def __len__(self) -> int:
        """Number of queued jobs."""
        return len(self._heap)


class SjfScheduler(Scheduler):
    """Shortest job first: least remaining BS work, then release order."""

    name: ClassVar[str] = "sjf"

    def __init__(self) -> None:
        self._heap: list[tuple[float, float, int, int, Job]] = []
        self._order = itertools.count()

    def push(self, job: Job) -> None:
        """Queue ``job`` by its remaining estimated BS time."""
        _check_runnable(job)
        entry = (job.remaining_s, job.release_s, job.task_id, next(self._order), job)
        heapq.heappush(self._heap, entry)

    def pop(self) -> Slice | None:
        """Take the job with the least remaining work, to run to its end."""
        if not self._heap:
            return None
        job = heapq.heappop(self._heap)[-1]
        return Slice(job=job, stages=len(job.stage_s) - job.done)

    def __len__(self) -> int:
        """Number of queued jobs."""
        return len(self._heap)


class RoundRobinScheduler(Scheduler):
    """Round robin with a quantum of one stage, in the order jobs were pushed."""

    name: ClassVar[str] = "rr"

    def __init__(self) -> None:
        self._queue: deque[Job] = deque()

    def push(self, job: Job) -> None:
        """Put ``job`` at the back of the queue."""
        _check_runnable(job)
        self._queue.append(job)

    def pop(self) -> Slice | None:
        """Take the job at the front of the queue, for one stage."""
        if not self._queue:
            return None
        return Slice(job=self._queue.popleft(), stages=1)

    def __len__(self) -> int:
        """Number of queued jobs."""
        return len(self._queue)


SCHEDULERS: Mapping[str, type[Scheduler]] = MappingProxyType(
    {cls.name: cls for cls in (FcfsScheduler, SjfScheduler, RoundRobinScheduler)}
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
