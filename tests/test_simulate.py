"""The simulator reproduces delays worked out by hand on tiny instances."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile, StageProfile
from splitlab.schedule import SCHEDULERS, Job, Slice, make_scheduler
from splitlab.simulate import TaskPrediction, simulate, summarize
from splitlab.workload import TaskSpec, generate_tasks


def profile(node: str, input_bytes: int, *stages: tuple[float, int]) -> NodeProfile:
    """A profile from (median_s, output_bytes) pairs."""
    return NodeProfile(
        node=node,
        model="toy",
        input_bytes=input_bytes,
        stages=tuple(
            StageProfile(
                name=f"s{i}", median_s=t, p95_s=t, output_bytes=size, param_bytes=0
            )
            for i, (t, size) in enumerate(stages, start=1)
        ),
    )


def task(
    task_id: int,
    device: str,
    index: int,
    arrival_s: float,
    deadline_s: float | None = None,
) -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        device=device,
        index=index,
        arrival_s=arrival_s,
        sample=0,
        deadline_s=deadline_s,
    )


def parts(p: TaskPrediction) -> tuple[float, ...]:
    return (
        p.device_wait_s,
        p.device_s,
        p.transmission_s,
        p.bs_wait_s,
        p.bs_s,
        p.end_s,
    )


# --- one device: waiting for the CPU and for the link -----------------------
#
# Device: stage 1 takes 1.0 s and emits 1000 B, stage 2 takes 4.0 s.
# BS: stage 1 0.5 s, stage 2 1.5 s.  Link: 0.25 s latency, 4000 bit/s, so
# 1000 B occupy it 1000 * 8 / 4000 = 2.0 s.
ONE_DEV = profile("d1", 4000, (1.0, 1000), (4.0, 10))
ONE_BS = profile("bs", 4000, (0.5, 1000), (1.5, 10))
ONE_LINK = LinkSpec(latency_s=0.25, rate_bps=4000.0)
ONE_TASKS = (task(0, "d1", 0, 0.0), task(1, "d1", 1, 0.5))


def one_device(cut: int) -> tuple[TaskPrediction, ...]:
    return simulate(
        ONE_TASKS,
        cuts={"d1": cut},
        device_profiles={"d1": ONE_DEV},
        bs_profile=ONE_BS,
        links={"d1": ONE_LINK},
        scheduler="fcfs",
        workers=1,
    )


def test_device_and_link_queueing_at_cut_1() -> None:
    first, second = one_device(1)
    # Task 0: head 0 -> 1; link 1 -> 3; arrives 3 + 0.25 = 3.25, so
    # transmission 2.25; BS stage 2 runs 3.25 -> 4.75.
    assert parts(first) == (0.0, 1.0, 2.25, 0.0, 1.5, 4.75)
    assert first.delay_s == 4.75
    # Task 1 arrives at 0.5, the CPU is busy until 1: waits 0.5, head 1 -> 2.
    # The link is busy until 3: sends 3 -> 5, arrives 5.25, so transmission
    # 5.25 - 2 = 3.25 (1.0 of it waiting for the link).  BS 5.25 -> 6.75.
    assert parts(second) == (0.5, 1.0, 3.25, 0.0, 1.5, 6.75)
    assert second.delay_s == 6.25
    assert (second.task_id, second.device, second.index, second.cut) == (1, "d1", 1, 1)


def test_local_only_never_touches_link_or_bs() -> None:
    first, second = one_device(2)
    # Task 0 runs both stages 0 -> 5; task 1 waits 5 - 0.5 = 4.5, runs 5 -> 10.
    assert parts(first) == (0.0, 5.0, 0.0, 0.0, 0.0, 5.0)
    assert parts(second) == (4.5, 5.0, 0.0, 0.0, 0.0, 10.0)
    assert second.delay_s == 9.5


def test_offload_all_sends_the_input() -> None:
    first, second = one_device(0)
    # The 4000 B input occupies the link 8.0 s.  Task 0: link 0 -> 8, arrives
    # 8.25, BS 0.5 + 1.5 = 2.0 s: 8.25 -> 10.25.  Task 1: link 8 -> 16 (waits
    # 7.5), arrives 16.25, transmission 16.25 - 0.5 = 15.75, BS -> 18.25.
    assert parts(first) == (0.0, 0.0, 8.25, 0.0, 2.0, 10.25)
    assert parts(second) == (0.0, 0.0, 15.75, 0.0, 2.0, 18.25)


# --- three devices sharing the BS -------------------------------------------
#
# Every device: stage 1 1.0 s emitting 64 B, stage 2 1.0 s; input 64 B.
# BS: stage 1 1.0 s, stage 2 2.0 s.  Links: no latency, 512 bit/s, so 64 B
# take 1.0 s.
#   x: cut 0, task 0 at 0.0: link 0 -> 1, at the BS at 1.0, job (1, 2) = 3 s
#   y: cut 0, task 1 at 0.5: link 0.5 -> 1.5, at the BS at 1.5, job 3 s
#   z: cut 1, task 2 at 0.5: head 0.5 -> 1.5, link 1.5 -> 2.5, at the BS at
#      2.5, job (2,) = 2 s
SHARED_DEV = profile("dev", 64, (1.0, 64), (1.0, 8))
SHARED_BS = profile("bs", 64, (1.0, 64), (2.0, 8))
SHARED_LINK = LinkSpec(latency_s=0.0, rate_bps=512.0)
SHARED_TASKS = (task(0, "x", 0, 0.0), task(1, "y", 0, 0.5), task(2, "z", 0, 0.5))


def shared(scheduler: str, workers: int) -> dict[str, tuple[float, float]]:
    """(bs_wait_s, end_s) of each device's task."""
    predictions = simulate(
        SHARED_TASKS,
        cuts={"x": 0, "y": 0, "z": 1},
        device_profiles=dict.fromkeys("xyz", SHARED_DEV),
        bs_profile=SHARED_BS,
        links=dict.fromkeys("xyz", SHARED_LINK),
        scheduler=scheduler,
        workers=workers,
    )
    for p in predictions:
        assert p.transmission_s == 1.0
        assert p.device_wait_s == 0.0
    return {p.device: (p.bs_wait_s, p.end_s) for p in predictions}


def test_fcfs_one_worker() -> None:
    # x 1 -> 4; y waits 4 - 1.5 = 2.5, runs 4 -> 7; z waits 7 - 2.5 = 4.5,
    # runs 7 -> 9.
    assert shared("fcfs", 1) == {"x": (0.0, 4.0), "y": (2.5, 7.0), "z": (4.5, 9.0)}


def test_sjf_one_worker() -> None:
    # x 1 -> 4; at 4 y (3 s) and z (2 s) wait: z 4 -> 6 (waited 1.5), then
    # y 6 -> 9 (waited 6 - 1.5 = 4.5).
    assert shared("sjf", 1) == {"x": (0.0, 4.0), "y": (4.5, 9.0), "z": (1.5, 6.0)}


def test_rr_one_worker() -> None:
    # 1: x stage 1 (1 -> 2).  1.5: y queued.  2: x to the back [y x];
    # y stage 1 (2 -> 3).  2.5: z queued [x z].  3: y to the back [x z y];
    # x stage 2 (3 -> 5), x done at 5.  z (5 -> 7), done.  y stage 2 (7 -> 9).
    # Waits: x 5 - 1 - 3 = 1, y 9 - 1.5 - 3 = 4.5, z 7 - 2.5 - 2 = 2.5.
    assert shared("rr", 1) == {"x": (1.0, 5.0), "y": (4.5, 9.0), "z": (2.5, 7.0)}


def test_fcfs_two_workers() -> None:
    # x 1 -> 4 and y 1.5 -> 4.5 on the two workers; z waits 2.5 -> 4, 4 -> 6.
    assert shared("fcfs", 2) == {"x": (0.0, 4.0), "y": (0.0, 4.5), "z": (1.5, 6.0)}


def test_rr_two_workers_breaks_a_tie_by_release() -> None:
    # x: stage 1 1 -> 2, stage 2 2 -> 4.  y: stage 1 1.5 -> 2.5.  At 2.5 y
    # goes back to the queue and z arrives, at the same instant: y (released
    # 1.5) enters before z (released 2.5), so y stage 2 runs 2.5 -> 4.5 and
    # z waits for x's worker, 4 -> 6.  The other order would end y at 6.
    assert shared("rr", 2) == {"x": (0.0, 4.0), "y": (0.0, 4.5), "z": (1.5, 6.0)}


def test_many_workers_remove_bs_waiting() -> None:
    assert shared("sjf", 3) == {"x": (0.0, 4.0), "y": (0.0, 4.5), "z": (0.0, 4.5)}


def test_same_instant_arrivals_go_to_the_shortest_job() -> None:
    # Two tasks reach the BS at the same instant, 1.0:
    #   p: cut 0, 64 B at 512 bit/s -> arrives 1.0, job 3 s (task 0)
    #   q: cut 1, head 0.5 s, 64 B at 1024 bit/s -> 0.5 + 0.5 = 1.0, job 2 s
    fast_head = profile("q", 64, (0.5, 64), (1.0, 8))
    kwargs: dict[str, Any] = {
        "cuts": {"p": 0, "q": 1},
        "device_profiles": {"p": SHARED_DEV, "q": fast_head},
        "bs_profile": SHARED_BS,
        "links": {"p": SHARED_LINK, "q": LinkSpec(latency_s=0.0, rate_bps=1024.0)},
        "workers": 1,
    }
    tasks = (task(0, "p", 0, 0.0), task(1, "q", 0, 0.0))
    sjf = simulate(tasks, scheduler="sjf", **kwargs)
    fcfs = simulate(tasks, scheduler="fcfs", **kwargs)
    # SJF: q 1 -> 3, p 3 -> 6.  FCFS (equal release, lower id): p 1 -> 4,
    # q 4 -> 6.
    assert [p.end_s for p in sjf] == [6.0, 3.0]
    assert [p.end_s for p in fcfs] == [4.0, 6.0]


def test_order_of_tasks_does_not_matter_and_output_is_sorted() -> None:
    rng = random.Random(7)
    tasks = [task(i, f"d{i % 3}", i // 3, rng.uniform(0.0, 5.0)) for i in range(60)]
    kwargs: dict[str, Any] = {
        "cuts": {"d0": 0, "d1": 1, "d2": 2},
        "device_profiles": dict.fromkeys(("d0", "d1", "d2"), SHARED_DEV),
        "bs_profile": SHARED_BS,
        "links": dict.fromkeys(("d0", "d1", "d2"), SHARED_LINK),
        "scheduler": "rr",
        "workers": 2,
    }
    forward = simulate(tasks, **kwargs)
    shuffled = list(tasks)
    rng.shuffle(shuffled)
    assert simulate(shuffled, **kwargs) == forward
    assert [p.task_id for p in forward] == list(range(60))


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=25),
    cuts=st.tuples(*(st.integers(0, 2),) * 3),
    scheduler=st.sampled_from(sorted(SCHEDULERS)),
    workers=st.integers(1, 3),
)
def test_parts_add_up_and_waits_are_not_negative(
    arrivals: list[float],
    cuts: tuple[int, int, int],
    scheduler: str,
    workers: int,
) -> None:
    devices = ("d0", "d1", "d2")
    tasks = [task(i, devices[i % 3], i // 3, at) for i, at in enumerate(arrivals)]
    predictions = simulate(
        tasks,
        cuts=dict(zip(devices, cuts, strict=True)),
        device_profiles=dict.fromkeys(devices, SHARED_DEV),
        bs_profile=SHARED_BS,
        links=dict.fromkeys(devices, LinkSpec(latency_s=0.125, rate_bps=512.0)),
        scheduler=scheduler,
        workers=workers,
    )
    for p in predictions:
        total = (
            p.arrival_s
            + p.device_wait_s
            + p.device_s
            + p.transmission_s
            + p.bs_wait_s
            + p.bs_s
        )
        assert total == pytest.approx(p.end_s, abs=1e-9)
        assert min(p.device_wait_s, p.bs_wait_s) >= -1e-9
        if p.cut == 2:
            assert (p.transmission_s, p.bs_wait_s, p.bs_s) == (0.0, 0.0, 0.0)
        else:
            assert p.bs_s == SHARED_BS.tail_s(p.cut)
            # At least latency plus 64 B at 512 bit/s.
            assert p.transmission_s >= 1.125 - 1e-9


def test_bad_inputs_are_refused() -> None:
    base: dict[str, Any] = {
        "cuts": {"d1": 1},
        "device_profiles": {"d1": ONE_DEV},
        "bs_profile": ONE_BS,
        "links": {"d1": ONE_LINK},
        "scheduler": "fcfs",
        "workers": 1,
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cuts": {}}, "device 'd1' has tasks but no cut"),
        ({"links": {}}, "device 'd1' has tasks but no link"),
        ({"cuts": {"d1": 3}}, "device 'd1' cut 3 is outside 0..2"),
        ({"workers": 0}, "workers must be at least 1, got 0"),
        ({"scheduler": "lifo"}, "unknown scheduler 'lifo'"),
        (
            {"device_profiles": {"d1": profile("d1", 1, (1.0, 1))}},
            "device 'd1' profile has 1 stages, the BS profile has 2",
        ),
        (
            {"links": {"d1": LinkSpec(latency_s=0.0, rate_bps=0.0)}},
            "device 'd1' link rate_bps must be positive, got 0.0",
        ),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            simulate(ONE_TASKS, **{**base, **change})
    with pytest.raises(ConfigError, match="task_id 0 appears more than once"):
        simulate(ONE_TASKS + ONE_TASKS[:1], **base)


# --- preemptive and priority schedulers on one instance ----------------------
#
# Devices run stages of 0.5 s that emit 0 B, so nothing waits for a link and
# a task reaches the BS when its head ends.  BS: three stages of 1.0 s.
#   long:  cut 0, task 0 at 0.0 -> at the BS at 0.0, 3 stages (3 s)
#   mid:   cut 1, task 1 at 0.0 -> head 0.5, at the BS at 0.5, 2 stages
#   short: cut 2, task 2 at 0.0 -> head 1.0, at the BS at 1.0, 1 stage
PRE_DEV = profile("dev", 0, (0.5, 0), (0.5, 0), (0.5, 0))
PRE_BS = profile("bs", 0, (1.0, 0), (1.0, 0), (1.0, 0))
PRE_CUTS = {"long": 0, "mid": 1, "short": 2}


def pre(
    scheduler: str,
    workers: int,
    *,
    deadlines_s: tuple[float | None, float | None, float | None] = (None,) * 3,
    priorities: dict[str, int] | None = None,
) -> dict[str, float]:
    """end_s of each device's task."""
    tasks = [
        task(n, device, 0, 0.0, deadline_s)
        for n, (device, deadline_s) in enumerate(
            zip(PRE_CUTS, deadlines_s, strict=True)
        )
    ]
    predictions = simulate(
        tasks,
        cuts=PRE_CUTS,
        device_profiles=dict.fromkeys(PRE_CUTS, PRE_DEV),
        bs_profile=PRE_BS,
        links=dict.fromkeys(PRE_CUTS, LinkSpec(latency_s=0.0, rate_bps=1000.0)),
        scheduler=scheduler,
        workers=workers,
        priorities=priorities,
    )
    for p in predictions:
        assert p.transmission_s == 0.0
        assert p.arrival_s + p.device_s + p.bs_wait_s + p.bs_s == p.end_s
    return {p.device: p.end_s for p in predictions}


def test_pre_fcfs_and_sjf_one_worker() -> None:
    # FCFS: long 0 -> 3, mid 3 -> 5, short 5 -> 6.
    assert pre("fcfs", 1) == {"long": 3.0, "mid": 5.0, "short": 6.0}
    # SJF: long 0 -> 3 whole; at 3 short (1 s) before mid (2 s).
    assert pre("sjf", 1) == {"long": 3.0, "mid": 6.0, "short": 4.0}


def test_srpt_one_worker() -> None:
    # 0: long stage 1 (0 -> 1).  0.5: mid queued (2 s left).  1: long back
    # with 2 s left and short arrives with 1 s: short 1 -> 2.  2: long (2 s,
    # released 0) ties mid (2 s, released 0.5) and goes first: 2 -> 3, then
    # with 1 s left 3 -> 4.  mid 4 -> 5 -> 6.
    assert pre("srpt", 1) == {"long": 4.0, "mid": 6.0, "short": 2.0}


def test_srpt_two_workers() -> None:
    # 0: long stage 1 on w1 (0 -> 1).  0.5: mid stage 1 on w2 (0.5 -> 1.5).
    # 1: long back (2 s left), short arrives (1 s): short on w1 (1 -> 2).
    # 1.5: mid back (1 s left) before long (2 s): mid on w2 (1.5 -> 2.5).
    # 2: long stage 2 on w1 (2 -> 3), stage 3 (3 -> 4).
    assert pre("srpt", 2) == {"long": 4.0, "mid": 2.5, "short": 2.0}


def test_edf_one_worker_with_a_missed_deadline() -> None:
    # Deadlines: long 4.5, mid 4, short none.  0: long stage 1 (0 -> 1).
    # 0.5: mid queued.  1: long back (4.5), short arrives (+inf): mid (4)
    # runs 1 -> 2 -> 3.  long 3 -> 4 -> 5, after its deadline.  short 5 -> 6.
    ends = pre("edf", 1, deadlines_s=(4.5, 4.0, None))
    assert ends == {"long": 5.0, "mid": 3.0, "short": 6.0}


def test_edf_two_workers() -> None:
    # 0: long stage 1 on w1 (0 -> 1).  0.5: mid stage 1 on w2 (0.5 -> 1.5).
    # 1: long (4.5) before short (+inf): long stage 2 (1 -> 2).  1.5: mid
    # (4) before short: mid stage 2 (1.5 -> 2.5).  2: long stage 3 (2 -> 3).
    # 2.5: short (2.5 -> 3.5).
    ends = pre("edf", 2, deadlines_s=(4.5, 4.0, None))
    assert ends == {"long": 3.0, "mid": 2.5, "short": 3.5}


def test_priority_one_and_two_workers() -> None:
    priorities = {"long": 1, "mid": 1}  # short is left out: priority 0
    # One worker: long 0 -> 3 (not preempted); at 3 short (0) before mid (1).
    assert pre("priority", 1, priorities=priorities) == {
        "long": 3.0,
        "mid": 6.0,
        "short": 4.0,
    }
    # Two workers: long 0 -> 3, mid 0.5 -> 2.5, short waits for mid, -> 3.5.
    assert pre("priority", 2, priorities=priorities) == {
        "long": 3.0,
        "mid": 2.5,
        "short": 3.5,
    }
    # Without priorities every job is 0: first come, first served.
    assert pre("priority", 1) == pre("fcfs", 1)


def test_deadlines_are_copied_and_checked() -> None:
    tasks = [
        task(0, "long", 0, 0.0, 4.5),
        task(1, "mid", 0, 0.0, 3.0),
        task(2, "short", 0, 0.0),
    ]
    predictions = simulate(
        tasks,
        cuts=PRE_CUTS,
        device_profiles=dict.fromkeys(PRE_CUTS, PRE_DEV),
        bs_profile=PRE_BS,
        links=dict.fromkeys(PRE_CUTS, LinkSpec(latency_s=0.0, rate_bps=1000.0)),
        scheduler="edf",
        workers=1,
    )
    # As in the one-worker EDF case: long ends 5 (> 4.5), mid 3 (== 3, met).
    assert [p.deadline_s for p in predictions] == [4.5, 3.0, None]
    assert [p.met_deadline for p in predictions] == [False, True, None]

    summary = summarize(predictions)
    # Delays 5, 3, 6: total 14, mean 14/3, variance ((1/3)^2 + (5/3)^2 +
    # (4/3)^2) / 3 = 42/27.
    assert (summary.tasks, summary.total_delay_s, summary.max_delay_s) == (3, 14, 6)
    assert summary.mean_delay_s == pytest.approx(14 / 3)
    assert summary.delay_variance_s2 == pytest.approx(42 / 27)
    assert (summary.deadline_tasks, summary.missed_deadlines) == (2, 1)
    assert summarize(()).tasks == 0


def test_generated_deadlines_reach_the_predictions() -> None:
    tasks = generate_tasks(
        ["long", "mid", "short"], tasks_per_device=3, period_s=2.0,
        arrivals="periodic", num_samples=10, seed=4, relative_deadline_s=2.5,
    )  # fmt: skip
    predictions = simulate(
        tasks,
        cuts=PRE_CUTS,
        device_profiles=dict.fromkeys(PRE_CUTS, PRE_DEV),
        bs_profile=PRE_BS,
        links=dict.fromkeys(PRE_CUTS, LinkSpec(latency_s=0.0, rate_bps=1000.0)),
        scheduler="edf",
        workers=2,
    )
    by_id = {t.task_id: t for t in tasks}
    for p in predictions:
        assert p.deadline_s == by_id[p.task_id].arrival_s + 2.5
        assert p.met_deadline == (p.end_s <= p.deadline_s)


# --- the simulator makes the choices the scheduler classes make --------------


def reference_ends(jobs: list[Job], scheduler: str, workers: int) -> dict[int, float]:
    """Drive a scheduler object the way the BS's worker threads do."""
    queue = make_scheduler(scheduler)
    pending = sorted(jobs, key=lambda job: (job.release_s, job.task_id))
    running: list[tuple[float, Slice]] = []
    ends: dict[int, float] = {}
    while pending or running:
        now = min([end for end, _ in running] + [j.release_s for j in pending[:1]])
        events: list[Job | Slice] = [piece for end, piece in running if end == now]
        running = [(end, piece) for end, piece in running if end != now]
        while pending and pending[0].release_s == now:
            events.append(pending.pop(0))

        def order(item: Job | Slice) -> tuple[float, int]:
            job = item if isinstance(item, Job) else item.job
            return (job.release_s, job.task_id)

        for item in sorted(events, key=order):
            if isinstance(item, Job):
                queue.push(item)
            elif queue.finish(item) is None:
                ends[item.job.task_id] = now
        while len(running) < workers and (piece := queue.pop()) is not None:
            running.append((now + piece.duration_s, piece))
    return ends


@settings(max_examples=250, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.integers(0, 12),  # arrival in quarters of a second
            st.integers(0, 2),  # cut
            st.one_of(st.none(), st.integers(0, 40)),  # deadline in quarters
            st.integers(0, 2),  # the device: d0, d1, d2
        ),
        min_size=1,
        max_size=20,
    ),
    scheduler=st.sampled_from(sorted(SCHEDULERS)),
    workers=st.integers(1, 3),
)
def test_simulator_matches_the_scheduler_classes(
    jobs: list[tuple[int, int, int | None, int]], scheduler: str, workers: int
) -> None:
    # Heads take no time and nothing crosses a link, so every job reaches the
    # BS at its arrival exactly; stages of 0.5, 1.0 and 0.25 s make many
    # events fall on the same instant.
    devices = ("d0", "d1", "d2")
    device_profile = profile("dev", 0, (0.0, 0), (0.0, 0), (0.0, 0))
    bs_profile = profile("bs", 0, (0.5, 0), (1.0, 0), (0.25, 0))
    stage_s = tuple(stage.median_s for stage in bs_profile.stages)
    priorities = {"d0": 2, "d1": 0, "d2": 1}
    cut_of: dict[str, int] = {}
    tasks: list[TaskSpec] = []
    expected_jobs: list[Job] = []
    for n, (quarter, cut, deadline, device_no) in enumerate(jobs):
        device = devices[device_no]
        # A device has one cut: its first task's.
        cut_of.setdefault(device, cut)
        deadline_s = None if deadline is None else deadline / 4
        tasks.append(task(n, device, n, quarter / 4, deadline_s))
    for n, spec in enumerate(tasks):
        cut = cut_of[spec.device]
        expected_jobs.append(
            Job(
                task_id=n,
                device=spec.device,
                release_s=spec.arrival_s,
                stage_s=stage_s[cut:],
                deadline_s=spec.deadline_s,
                priority=priorities[spec.device],
            )
        )
    predictions = simulate(
        tasks,
        cuts=cut_of,
        device_profiles=dict.fromkeys(devices, device_profile),
        bs_profile=bs_profile,
        links=dict.fromkeys(devices, LinkSpec(latency_s=0.0, rate_bps=1.0)),
        scheduler=scheduler,
        workers=workers,
        priorities=priorities,
    )
    expected = reference_ends(expected_jobs, scheduler, workers)
    assert {p.task_id: p.end_s for p in predictions} == expected


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_same_inputs_same_predictions(scheduler: str) -> None:
    devices = [f"d{n}" for n in range(6)]
    tasks = generate_tasks(
        devices, tasks_per_device=30, period_s=1.5, arrivals="poisson",
        num_samples=100, seed=11, relative_deadline_s=6.0,
    )  # fmt: skip
    kwargs: dict[str, Any] = {
        "cuts": {d: n % 3 for n, d in enumerate(devices)},
        "device_profiles": dict.fromkeys(devices, SHARED_DEV),
        "bs_profile": SHARED_BS,
        "links": dict.fromkeys(devices, SHARED_LINK),
        "scheduler": scheduler,
        "workers": 2,
        "priorities": {d: n % 2 for n, d in enumerate(devices)},
    }
    first = simulate(tasks, **kwargs)
    assert simulate(list(reversed(tasks)), **kwargs) == first
    assert [p.task_id for p in first] == list(range(180))
