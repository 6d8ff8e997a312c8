"""The BS schedulers order hand-made queues exactly as worked out by hand."""

from __future__ import annotations

import pytest

from splitlab.errors import ConfigError
from splitlab.schedule import (
    SCHEDULERS,
    EdfScheduler,
    FcfsScheduler,
    Job,
    PriorityScheduler,
    RoundRobinScheduler,
    Scheduler,
    SjfScheduler,
    Slice,
    SrptScheduler,
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
    assert set(SCHEDULERS) == {"fcfs", "sjf", "srpt", "rr", "edf", "priority"}
    assert isinstance(make_scheduler("rr"), RoundRobinScheduler)
    assert isinstance(make_scheduler("sjf"), SjfScheduler)
    assert isinstance(make_scheduler("srpt"), SrptScheduler)
    assert isinstance(make_scheduler("edf"), EdfScheduler)
    assert isinstance(make_scheduler("priority"), PriorityScheduler)
    with pytest.raises(
        ConfigError,
        match=r"unknown scheduler 'lifo'; known: edf, fcfs, priority, rr, sjf, srpt",
    ):
        make_scheduler("lifo")


def test_preemptive_policies_hand_out_one_stage() -> None:
    assert {name for name, cls in SCHEDULERS.items() if cls.preemptive} == {
        "srpt",
        "rr",
        "edf",
    }


def test_finish_keeps_deadline_and_priority() -> None:
    job = Job(
        task_id=5, device="d", release_s=0.0, stage_s=(1.0, 1.0), deadline_s=3.0,
        priority=2,
    )  # fmt: skip
    scheduler = SrptScheduler()
    scheduler.push(job)
    piece = scheduler.pop()
    assert piece is not None
    advanced = scheduler.finish(piece)
    assert advanced is not None
    assert (advanced.done, advanced.deadline_s, advanced.priority) == (1, 3.0, 2)


# --- srpt --------------------------------------------------------------------


def test_srpt_one_worker_runs_least_remaining_stage_by_stage() -> None:
    # Remaining: B 1 < C 2 < A 4.  B's only stage; C stage 1, back with 1
    # left (still least); C stage 2; then A stage 1, back with 1; A stage 2.
    assert drain(SrptScheduler(), [A, B, C]) == [
        (2, 0, 1),
        (3, 0, 1),
        (3, 1, 1),
        (1, 0, 1),
        (1, 1, 1),
    ]


def test_srpt_preempts_a_long_job_at_its_stage_boundary() -> None:
    # A starts stage 1 (3 s).  D (0.5 s of work) arrives meanwhile.  When A's
    # stage ends A has 1 s left, more than D's 0.5 s, so D runs before A's
    # second stage.  SJF would have run A's two stages in one slice.
    d = Job(task_id=4, device="d", release_s=0.5, stage_s=(0.5,))
    srpt = SrptScheduler()
    srpt.push(A)
    a1 = srpt.pop()
    assert a1 is not None and a1.stages == 1
    srpt.push(d)
    srpt.finish(a1)
    assert drain(srpt, []) == [(4, 0, 1), (1, 1, 1)]

    sjf = SjfScheduler()
    sjf.push(A)
    whole = sjf.pop()
    assert whole is not None and whole.stages == 2


def test_srpt_equal_remaining_goes_to_the_earlier_release() -> None:
    # After A's first stage A has 1 s left, like B: A was released first.
    srpt = SrptScheduler()
    srpt.push(A)
    a1 = srpt.pop()
    assert a1 is not None
    srpt.push(B)
    srpt.finish(a1)
    assert drain(srpt, []) == [(1, 1, 1), (2, 0, 1)]


def test_srpt_two_workers_step_by_step() -> None:
    srpt = SrptScheduler()
    for job in (A, B, C):
        srpt.push(job)
    # t=0: B (1 s, ends 1) and C stage 1 (ends 1); A waits.
    b1, c1 = srpt.pop(), srpt.pop()
    assert b1 is not None and c1 is not None
    assert [(p.job.task_id, p.job.done) for p in (b1, c1)] == [(2, 0), (3, 0)]
    assert len(srpt) == 1
    # t=1: B is done, C goes back with 1 s left, less than A's 4.
    assert srpt.finish(b1) is None
    assert srpt.finish(c1) is not None
    c2, a1 = srpt.pop(), srpt.pop()
    assert c2 is not None and a1 is not None
    assert [(p.job.task_id, p.job.done) for p in (c2, a1)] == [(3, 1), (1, 0)]
    # t=2: C is done; t=4: A goes back and runs its last stage.
    assert srpt.finish(c2) is None
    assert srpt.pop() is None
    assert srpt.finish(a1) is not None
    a2 = srpt.pop()
    assert a2 is not None and (a2.job.task_id, a2.job.done) == (1, 1)


# --- edf ---------------------------------------------------------------------
#
#   E1: task 1, released 0, stages (1, 1), deadline 10
#   E2: task 2, released 0, stages (2,),   deadline 5
#   E3: task 3, released 1, stages (1,),   no deadline (+inf)
#   E4: task 4, released 2, stages (1,),   deadline 5 (ties E2, released later)
E1 = Job(task_id=1, device="a", release_s=0.0, stage_s=(1.0, 1.0), deadline_s=10.0)
E2 = Job(task_id=2, device="b", release_s=0.0, stage_s=(2.0,), deadline_s=5.0)
E3 = Job(task_id=3, device="c", release_s=1.0, stage_s=(1.0,))
E4 = Job(task_id=4, device="d", release_s=2.0, stage_s=(1.0,), deadline_s=5.0)


def test_edf_one_worker_runs_earliest_deadline_first() -> None:
    # Deadlines 5 (E2, released 0), 5 (E4, released 2), 10 (E1, both its
    # stages), then E3, which has none.
    assert drain(EdfScheduler(), [E3, E1, E4, E2]) == [
        (2, 0, 1),
        (4, 0, 1),
        (1, 0, 1),
        (1, 1, 1),
        (3, 0, 1),
    ]


def test_edf_preempts_at_a_stage_boundary_for_an_earlier_deadline() -> None:
    # E1 runs its first stage; E2 (deadline 5 < 10) arrives meanwhile and
    # runs before E1's second stage.
    edf = EdfScheduler()
    edf.push(E1)
    e1 = edf.pop()
    assert e1 is not None and e1.stages == 1
    edf.push(E2)
    edf.finish(e1)
    assert drain(edf, []) == [(2, 0, 1), (1, 1, 1)]


def test_edf_without_deadlines_is_first_come_first_served() -> None:
    # No job has a deadline: every key starts with +inf, so release order,
    # one stage at a time.  The first job keeps its worker: A, A, B, C, C.
    assert drain(EdfScheduler(), [C, B, A]) == [
        (1, 0, 1),
        (1, 1, 1),
        (2, 0, 1),
        (3, 0, 1),
        (3, 1, 1),
    ]


def test_edf_two_workers_step_by_step() -> None:
    edf = EdfScheduler()
    for job in (E1, E2, E3, E4):
        edf.push(job)
    # t=0: E2 (2 s, ends 2) and E4 (1 s, ends 1).
    e2, e4 = edf.pop(), edf.pop()
    assert e2 is not None and e4 is not None
    assert (e2.job.task_id, e4.job.task_id) == (2, 4)
    # t=1: E4 is done; E1 stage 1 (ends 2).
    assert edf.finish(e4) is None
    e1 = edf.pop()
    assert e1 is not None and (e1.job.task_id, e1.job.done) == (1, 0)
    # t=2: E2 is done, E1 goes back; E1 stage 2 and E3 take both workers.
    assert edf.finish(e2) is None
    assert edf.finish(e1) is not None
    last = [edf.pop(), edf.pop()]
    assert [(p.job.task_id, p.job.done) for p in last if p is not None] == [
        (1, 1),
        (3, 0),
    ]
    assert edf.pop() is None


# --- priority ----------------------------------------------------------------
#
#   P0: task 0, released 0.0, stages (1,),   priority 1
#   P1: task 1, released 0.0, stages (2,),   priority 1 (ties P0: lower id)
#   P2: task 2, released 1.0, stages (1, 1), priority 0
#   P3: task 3, released 0.5, stages (1,),   priority 1
#   P4: task 4, released 0.5, stages (1,),   priority 0 (before P2: earlier)
P0 = Job(task_id=0, device="a", release_s=0.0, stage_s=(1.0,), priority=1)
P1 = Job(task_id=1, device="a", release_s=0.0, stage_s=(2.0,), priority=1)
P2 = Job(task_id=2, device="b", release_s=1.0, stage_s=(1.0, 1.0), priority=0)
P3 = Job(task_id=3, device="c", release_s=0.5, stage_s=(1.0,), priority=1)
P4 = Job(task_id=4, device="b", release_s=0.5, stage_s=(1.0,), priority=0)


def test_priority_lower_number_first_then_release_then_task_id() -> None:
    assert drain(PriorityScheduler(), [P3, P2, P1, P0, P4]) == [
        (4, 0, 1),
        (2, 0, 2),
        (0, 0, 1),
        (1, 0, 1),
        (3, 0, 1),
    ]


def test_priority_does_not_preempt() -> None:
    # P1 (priority 1) has started when P2 (priority 0) arrives: P1's slice
    # already covers all its work, and P2 waits for it.
    two_stage = Job(task_id=1, device="a", release_s=0.0, stage_s=(2.0, 1.0),
                    priority=1)  # fmt: skip
    scheduler = PriorityScheduler()
    scheduler.push(two_stage)
    piece = scheduler.pop()
    assert piece is not None and piece.stages == 2 and piece.duration_s == 3.0
    scheduler.push(P2)
    assert scheduler.finish(piece) is None
    assert drain(scheduler, []) == [(2, 0, 2)]


def test_priority_two_workers_step_by_step() -> None:
    scheduler = PriorityScheduler()
    for job in (P0, P1, P3):
        scheduler.push(job)
    # t=0: the two priority-1 jobs released at 0 start (P0 1 s, P1 2 s).
    p0, p1 = scheduler.pop(), scheduler.pop()
    assert p0 is not None and p1 is not None
    assert (p0.job.task_id, p1.job.task_id) == (0, 1)
    # t=0.5: P4 (priority 0) joins P3; t=1: P0 ends, P4 goes first.
    scheduler.push(P4)
    assert scheduler.finish(p0) is None
    p4 = scheduler.pop()
    assert p4 is not None and p4.job.task_id == 4
    # t=2: P1 and P4 end; P3 (priority 1) and P2 (priority 0, released 1)
    # are queued: P2 first, then P3 on the other worker.
    scheduler.push(P2)
    assert scheduler.finish(p1) is None
    assert scheduler.finish(p4) is None
    nxt = [scheduler.pop(), scheduler.pop()]
    assert [p.job.task_id for p in nxt if p is not None] == [2, 3]
