"""The contention-aware algorithms: hand-worked instances, the exact solver
against brute force, and validity and determinism of the heuristics."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.plan import PlanningProblem, make_plan
from splitlab.profile import NodeProfile, StageProfile
from splitlab.search import (
    OBJECTIVES,
    AnnealingAlgorithm,
    ExactAlgorithm,
    GeneticAlgorithm,
    Objective,
    objective_value,
)
from splitlab.workload import TaskSpec

SEARCHES = ("greedy", "trend", "annealing", "genetic", "exact")


def profile(
    node: str, input_bytes: int, *stages: tuple[float, int, int]
) -> NodeProfile:
    """A profile from (median_s, output_bytes, param_bytes) per stage."""
    return NodeProfile(
        node=node,
        model="toy",
        input_bytes=input_bytes,
        stages=tuple(
            StageProfile(
                name=f"s{i}", median_s=t, p95_s=t, output_bytes=size, param_bytes=p
            )
            for i, (t, size, p) in enumerate(stages, start=1)
        ),
    )


LINK = LinkSpec(latency_s=0.0, rate_bps=512.0)  # 64 B take 1 s


def two_devices(objective: Objective = "total") -> PlanningProblem:
    """The two-device instance of test_plan.py.

    a: head 0, 1, 3.5 s and b: head 0, 1, 4 s for k = 0, 1, 2; every transfer
    1 s; BS tail 2, 1, 0 s; both tasks at 0; one FCFS worker.  Delays (a, b):
      (0,0) 3, 5   (0,1) 3, 4   (0,2) 3, 4
      (1,0) 4, 3   (1,1) 3, 4   (1,2) 3, 4
      (2,0) 3.5, 3 (2,1) 3.5, 3 (2,2) 3.5, 4
    Least total 6.5 at a = 2, b in {0, 1}; least max 3.5 there too; least
    variance 0.0625 (a 0.25 s spread) at a = 2, any b.
    """
    return PlanningProblem(
        device_profiles={
            "a": profile("a", 64, (1.0, 64, 100), (2.5, 8, 1000)),
            "b": profile("b", 64, (1.0, 64, 100), (3.0, 8, 1000)),
        },
        bs_profile=profile("bs", 64, (1.0, 64, 100), (1.0, 8, 1000)),
        links={"a": LINK, "b": LINK},
        tasks=(
            TaskSpec(task_id=0, device="a", index=0, arrival_s=0.0, sample=0),
            TaskSpec(task_id=1, device="b", index=0, arrival_s=0.0, sample=1),
        ),
        scheduler="fcfs",
        workers=1,
        device_memory_bytes={"a": 10_000, "b": 10_000},
        objective=objective,
    )


def one_busy_device(objective: Objective = "total") -> PlanningProblem:
    """One device with two tasks at 0: its own queue decides the best cut.

    Device stages 1 s each (head 0..4 s), BS stages 0.25 s (tail 1, 0.75,
    0.5, 0.25, 0), transfers at 512 bit/s: 192 B -> 3 s (k=0), 128 B -> 2 s,
    96 B -> 1.5 s, 32 B -> 0.5 s (k=3).  On an idle system k = 1 and k = 3
    both take 3.75 s, so the contention-free start is k = 3.  With both tasks:
      k=0: link 0-3, BS 3-4 (4); link 3-6, BS 6-7 (7)          total 11
      k=1: head 0-1, link 1-3, BS 3-3.75 (3.75);
           head 1-2, link 3-5, BS 5-5.75 (5.75)                total 9.5
      k=2: head 0-2, link 2-3.5, BS -4 (4); head 2-4, link 4-5.5, BS -6 (6)
                                                               total 10
      k=3: 3.75 and head 3-6, link -6.5, BS -6.75 (6.75)       total 10.5
      k=4: 4 and 8                                             total 12
    Max: 7, 5.75, 6, 6.75, 8.  Both objectives are least at k = 1.
    """
    return PlanningProblem(
        device_profiles={
            "a": profile(
                "a", 192, (1.0, 128, 1), (1.0, 96, 1), (1.0, 32, 1), (1.0, 8, 1)
            )
        },
        bs_profile=profile(
            "bs", 192, (0.25, 128, 1), (0.25, 96, 1), (0.25, 32, 1), (0.25, 8, 1)
        ),
        links={"a": LINK},
        tasks=(
            TaskSpec(task_id=0, device="a", index=0, arrival_s=0.0, sample=0),
            TaskSpec(task_id=1, device="a", index=1, arrival_s=0.0, sample=1),
        ),
        scheduler="fcfs",
        workers=1,
        device_memory_bytes={"a": 100},
        objective=objective,
    )


def test_objective_values() -> None:
    # Delays 3, 4, 5: sum 12, max 5, mean 4, variance (1 + 0 + 1) / 3.
    assert objective_value([3.0, 4.0, 5.0], "total") == 12.0
    assert objective_value([3.0, 4.0, 5.0], "max") == 5.0
    assert objective_value([3.0, 4.0, 5.0], "variance") == pytest.approx(2 / 3)
    assert objective_value([], "variance") == 0.0


@pytest.mark.parametrize("name", SEARCHES)
def test_two_devices_total(name: str) -> None:
    plan = make_plan(name, two_devices())
    assert plan.cuts["a"] == 2
    assert plan.total_delay_s == 6.5
    assert plan.max_delay_s == 3.5
    assert plan.delay_variance_s2 == 0.0625


@pytest.mark.parametrize("name", SEARCHES)
def test_two_devices_max(name: str) -> None:
    plan = make_plan(name, two_devices("max"))
    assert plan.cuts["a"] == 2
    assert plan.max_delay_s == 3.5


def test_exact_variance_ties_keep_the_larger_cuts() -> None:
    # (2,0), (2,1) and (2,2) all have variance 0.0625; enumeration from the
    # larger cuts keeps (2,2), whose total (7.5) is the worst of the three:
    # fairness alone does not care.
    plan = make_plan("exact", two_devices("variance"))
    assert dict(plan.cuts) == {"a": 2, "b": 2}
    assert plan.delay_variance_s2 == 0.0625
    assert plan.total_delay_s == 7.5


def test_trend_walks_until_the_trend_turns() -> None:
    # From k = 3 (10.5): up to 4 gives 12, down to 2 gives 10 -> walk down;
    # k = 1 gives 9.5, k = 0 gives 11 -> stop at k = 1.
    problem = one_busy_device()
    assert make_plan("neurosurgeon", problem).cuts["a"] == 3
    for name in SEARCHES:
        plan = make_plan(name, problem)
        assert plan.cuts["a"] == 1, name
        assert [p.delay_s for p in plan.predictions] == [3.75, 5.75]


def test_one_busy_device_max() -> None:
    for name in SEARCHES:
        assert make_plan(name, one_busy_device("max")).max_delay_s == 5.75, name


def test_memory_limits_bind_every_search() -> None:
    # a may hold 500 B: k = 2 (1100 B) is out, so a = 2 is lost; the best left
    # is total 7 (e.g. (1, 1)).
    tight = replace(two_devices(), device_memory_bytes={"a": 500, "b": 10_000})
    for name in SEARCHES:
        plan = make_plan(name, tight)
        assert plan.cuts["a"] in (0, 1), name
        assert plan.total_delay_s == 7.0, name


def random_problem(
    seed: int,
    *,
    scheduler: str,
    objective: Objective,
    max_devices: int = 3,
    max_stages: int = 5,
    max_tasks: int = 3,
) -> PlanningProblem:
    """A random small instance: profiles, links, arrivals, memory limits."""
    rng = random.Random(seed)
    num_devices = rng.randint(1, max_devices)
    num_stages = rng.randint(1, max_stages)

    def random_profile(node: str, scale: float) -> NodeProfile:
        return profile(
            node,
            rng.randint(100, 5000),
            *(
                (
                    round(rng.uniform(0.001, 0.02) * scale, 6),
                    rng.randint(10, 5000),
                    rng.randint(0, 1000),
                )
                for _ in range(num_stages)
            ),
        )

    devices = [f"d{i}" for i in range(num_devices)]
    tasks = []
    for device in devices:
        for index in range(rng.randint(1, max_tasks)):
            tasks.append(
                TaskSpec(
                    task_id=len(tasks),
                    device=device,
                    index=index,
                    arrival_s=round(rng.uniform(0.0, 0.05), 4),
                    sample=0,
                )
            )
    return PlanningProblem(
        device_profiles={d: random_profile(d, rng.uniform(1, 4)) for d in devices},
        bs_profile=random_profile("bs", 0.3),
        links={
            d: LinkSpec(latency_s=rng.uniform(0, 0.01), rate_bps=rng.uniform(1e5, 1e7))
            for d in devices
        },
        tasks=tuple(tasks),
        scheduler=scheduler,
        workers=rng.randint(1, 2),
        device_memory_bytes={d: rng.randint(0, 1000 * num_stages) for d in devices},
        objective=objective,
        seed=seed,
    )


def brute_force(problem: PlanningProblem) -> float:
    """The least objective over every allowed scheme, simulated one by one."""
    busy = sorted({task.device for task in problem.tasks})
    return min(
        objective_value(
            [p.delay_s for p in problem.predict(dict(zip(busy, cuts)))],
            problem.objective,
        )
        for cuts in itertools.product(*(problem.allowed_cuts(d) for d in busy))
    )


CASES = [
    (seed, scheduler, objective)
    for seed, (scheduler, objective) in enumerate(
        itertools.product(("fcfs", "sjf", "rr"), OBJECTIVES)
    )
] + [
    (100 + seed, ("fcfs", "sjf", "rr")[seed % 3], OBJECTIVES[seed // 3 % 3])
    for seed in range(27)
]


@pytest.mark.parametrize(("seed", "scheduler", "objective"), CASES)
def test_exact_matches_brute_force(
    seed: int, scheduler: str, objective: Objective
) -> None:
    problem = random_problem(seed, scheduler=scheduler, objective=objective)
    plan = make_plan("exact", problem)
    assert plan.objective_value(objective) == pytest.approx(
        brute_force(problem), abs=1e-9
    )
    # No heuristic beats the proven optimum.
    for name in ("greedy", "trend", "annealing", "genetic"):
        other = make_plan(name, problem).objective_value(objective)
        assert other >= plan.objective_value(objective) - 1e-9, name


def test_exact_refuses_large_instances() -> None:
    # one_busy_device has one device with 5 allowed cuts: 5 schemes.
    with pytest.raises(
        ConfigError,
        match=(
            r"exact: the instance has 5 schemes \(1 devices with tasks, allowed "
            r"cut counts \[5\]\); the variance objective is solved up to 4"
        ),
    ):
        make_plan(ExactAlgorithm(max_enumerated=4), one_busy_device("variance"))
    with pytest.raises(ConfigError, match=r"visited 1 nodes without finishing"):
        make_plan(ExactAlgorithm(max_nodes=1), one_busy_device())


@pytest.mark.parametrize("seed", range(12))
def test_heuristics_are_valid_and_deterministic(seed: int) -> None:
    # make_plan refuses a cut outside 0..L or beyond memory, so a plan at all
    # is validity; the same seed must give the same plan.
    problem = random_problem(
        seed,
        scheduler=("fcfs", "sjf", "rr")[seed % 3],
        objective=OBJECTIVES[seed % 3],
        max_devices=5,
        max_stages=8,
    )
    for name in ("greedy", "trend", "annealing", "genetic"):
        first = make_plan(name, problem)
        assert make_plan(name, problem) == first
        for device, cut in first.cuts.items():
            assert cut in problem.allowed_cuts(device)


def test_seed_changes_the_random_searches_only_through_the_seed() -> None:
    problem = random_problem(
        5, scheduler="rr", objective="total", max_devices=5, max_stages=8
    )
    annealing = AnnealingAlgorithm(steps=50, seed=11)
    genetic = GeneticAlgorithm(population=6, generations=3, seed=11)
    # A seed parameter overrides the problem's seed.
    assert annealing(problem) == annealing(replace(problem, seed=99))
    assert genetic(problem) == genetic(replace(problem, seed=99))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AnnealingAlgorithm(steps=0), "annealing steps must be at least 1"),
        (lambda: GeneticAlgorithm(population=3), "genetic needs population >= 4"),
        (lambda: GeneticAlgorithm(elite=24), r"genetic elite must be in 0\.\.23"),
    ],
)
def test_bad_parameters(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()  # type: ignore[operator]
