"""The BS schedulers order hand-made queues exactly as worked out by hand."""

from __future__ import annotations

import pytest

from splitlab.errors import ConfigError
from splitlab.schedule import (
    SCHEDULERS,
    FcfsScheduler,
    Job,
    RoundRobinScheduler,
    Scheduler,
    SjfScheduler,
    Slice,
    make_scheduler,
)

# Three jobs used throughout (stage times in seconds):
#   A: task 1, released at 0.0, stages (3, 1)  -> remaining 4
#   B: task 2, released at 1.0, stages (1,)    -> remaining 1
#   C: task 3, released at 2.0, stages (1, 1)  -> remaining 2
A = Job(task_id=1, device="a", release_s=0.0, stage_s=(3.0, 1.0))
B = Job(task_id=2, device="b", release_s=1.0, stage_s=(1.0,))
C = Job(task_id=3, device="c", release_s=2.0, stage_s=(1.0, 1.0))


def drain(scheduler: Scheduler, jobs: list[Job]) -> list[tuple[int, int, int]]:
    """Push ``jobs``, then run one worker until the queue is empty.

    Returns (task_id, first stage index, number of stages) of every slice.
    """
    for job in jobs:
        scheduler.push(job)
    order = []
    while (piece := scheduler.pop()) is not None:
        order.append((piece.job.task_id, piece.job.done, piece.stages))
        scheduler.finish(piece)
    return order


def test_job_remaining_and_finished() -> None:
    assert A.remaining_s == 4.0
    assert not A.finished
    half = Job(task_id=1, device="a", release_s=0.0, stage_s=(3.0, 1.0), done=1)
    assert half.remaining_s == 1.0
    assert Job(task_id=1, device="a", release_s=0.0, stage_s=(3.0,), done=1).finished


def test_slice_duration_covers_only_its_stages() -> None:
    job = Job(task_id=9, device="x", release_s=0.0, stage_s=(0.5, 2.0, 4.0), done=1)
    # Stages 2 and 3 of the job: 2.0 + 4.0.
    assert Slice(job=job, stages=2).duration_s == 6.0
    assert Slice(job=job, stages=1).duration_s == 2.0


def test_fcfs_runs_in_release_order_to_the_end() -> None:
    # Pushed out of order; release order is A (0.0), B (1.0), C (2.0).
    assert drain(FcfsScheduler(), [C, A, B]) == [(1, 0, 2), (2, 0, 1), (3, 0, 2)]


def test_sjf_runs_least_remaining_work_first() -> None:
    # Remaining work: B 1 < C 2 < A 4.
    assert drain(SjfScheduler(), [A, B, C]) == [(2, 0, 1), (3, 0, 2), (1, 0, 2)]


def test_rr_interleaves_stage_by_stage() -> None:
    # Queue A B C.  A runs stage 1 and goes to the back: B C A.  B runs its
    # only stage and leaves: C A.  C stage 1, back: A C.  A stage 2 (done),
    # then C stage 2 (done).
    assert drain(RoundRobinScheduler(), [A, B, C]) == [
        (1, 0, 1),
        (2, 0, 1),
        (3, 0, 1),
        (1, 1, 1),
        (3, 1, 1),
    ]


def test_ties_break_by_release_then_task_id() -> None:
    early = Job(task_id=7, device="x", release_s=0.5, stage_s=(2.0,))
    low_id = Job(task_id=4, device="y", release_s=1.0, stage_s=(2.0,))
    high_id = Job(task_id=5, device="z", release_s=1.0, stage_s=(2.0,))
    pushed = [high_id, low_id, early]
    # Equal release -> lower task id first; FCFS by release first.
    assert [t for t, _, _ in drain(FcfsScheduler(), pushed)] == [7, 4, 5]
    # Equal remaining work (2.0 each) -> release, then task id.
    assert [t for t, _, _ in drain(SjfScheduler(), pushed)] == [7, 4, 5]


def test_two_workers_round_robin_step_by_step() -> None:
    # Two workers, A B C all queued at time 0 (times in seconds).
    rr = RoundRobinScheduler()
    for job in (A, B, C):
        rr.push(job)

    # t=0: worker 1 takes A stage 1 (3 s, ends 3), worker 2 takes B (1 s, ends 1).
    a1, b1 = rr.pop(), rr.pop()
    assert a1 is not None and b1 is not None
    assert (a1.job.task_id, a1.duration_s, b1.job.task_id, b1.duration_s) == (
        1,
        3.0,
        2,
        1.0,
    )
    assert len(rr) == 1

    # t=1: B is done; worker 2 takes C stage 1 (ends 2).
    assert rr.finish(b1) is None
    c1 = rr.pop()
    assert c1 is not None and (c1.job.task_id, c1.job.done) == (3, 0)

    # t=2: C goes back to the queue (alone) and worker 2 takes its stage 2
    # (ends 3).
    advanced = rr.finish(c1)
    assert advanced is not None and advanced.done == 1
    c2 = rr.pop()
    assert c2 is not None and (c2.job.task_id, c2.job.done) == (3, 1)

    # t=3: A stage 1 and C stage 2 end together.  A goes back, C is done;
    # A's stage 2 (1 s) runs 3 -> 4.
    assert rr.finish(a1) is not None
    assert rr.finish(c2) is None
    a2 = rr.pop()
    assert a2 is not None and (a2.job.task_id, a2.job.done, a2.duration_s) == (
        1,
        1,
        1.0,
    )
    assert rr.finish(a2) is None
    assert rr.pop() is None and len(rr) == 0


def test_two_workers_sjf_takes_shortest_when_a_worker_frees() -> None:
    # Two workers, A B C queued.  t=0: B (1 s) and C (2 s) start; A (4 s)
    # waits.  t=1: B ends, the free worker takes A.
    sjf = SjfScheduler()
    for job in (A, B, C):
        sjf.push(job)
    first, second = sjf.pop(), sjf.pop()
    assert first is not None and second is not None
    assert (first.job.task_id, second.job.task_id) == (2, 3)
    assert sjf.finish(first) is None
    third = sjf.pop()
    assert third is not None and (third.job.task_id, third.stages) == (1, 2)


def test_empty_pop_and_len() -> None:
    for cls in SCHEDULERS.values():
        scheduler = cls()
        assert scheduler.pop() is None
        assert len(scheduler) == 0
        scheduler.push(A)
        assert len(scheduler) == 1


def test_finished_job_and_oversized_slice_are_refused() -> None:
    done = Job(task_id=1, device="a", release_s=0.0, stage_s=(1.0,), done=1)
    with pytest.raises(ValueError, match="task 1 has no stage left"):
        FcfsScheduler().push(done)
    with pytest.raises(ValueError, match="slice of 3 stages does not fit task 1"):
        RoundRobinScheduler().finish(Slice(job=A, stages=3))


def test_registry_and_unknown_name() -> None:
    assert set(SCHEDULERS) == {"fcfs", "sjf", "rr"}
    assert isinstance(make_scheduler("rr"), RoundRobinScheduler)
    assert isinstance(make_scheduler("sjf"), SjfScheduler)
    with pytest.raises(
        ConfigError, match=r"unknown scheduler 'edf'; known: fcfs, rr, sjf"
    ):
        make_scheduler("edf")
