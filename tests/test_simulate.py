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
from splitlab.simulate import TaskPrediction, simulate
from splitlab.workload import TaskSpec


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


def task(task_id: int, device: str, index: int, arrival_s: float) -> TaskSpec:
    return TaskSpec(
        task_id=task_id, device=device, index=index, arrival_s=arrival_s, sample=0
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
    scheduler=st.sampled_from(["fcfs", "sjf", "rr"]),
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
