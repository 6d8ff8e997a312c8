"""The planning algorithms give the cuts worked out by hand on a tiny instance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.plan import (
    ALGORITHMS,
    PlanningProblem,
    list_algorithms,
    load_algorithm,
    make_plan,
)
from splitlab.profile import NodeProfile, StageProfile
from splitlab.scenario import load_scenario
from splitlab.workload import TaskSpec, generate_tasks


def profile(node: str, *stages: tuple[float, int, int]) -> NodeProfile:
    """A profile with a 64 B input from (median_s, output_bytes, param_bytes)."""
    return NodeProfile(
        node=node,
        model="toy",
        input_bytes=64,
        stages=tuple(
            StageProfile(
                name=f"s{i}",
                median_s=t,
                p95_s=t,
                output_bytes=size,
                param_bytes=params,
            )
            for i, (t, size, params) in enumerate(stages, start=1)
        ),
    )


# Two devices, one task each at time 0, two stages:
#   a: stage 1 1.0 s, stage 2 2.5 s       head_s = 0, 1, 3.5 for k = 0, 1, 2
#   b: stage 1 1.0 s, stage 2 3.0 s       head_s = 0, 1, 4.0
#   BS: stage 1 1.0 s, stage 2 1.0 s      tail_s = 2, 1, 0
# Input and stage 1 output are 64 B; links have no latency and 512 bit/s,
# so any transfer takes 64 * 8 / 512 = 1.0 s.  Head weights: 100 B at k = 1,
# 1100 B at k = 2.  One BS worker, FCFS.
A_DEV = profile("a", (1.0, 64, 100), (2.5, 8, 1000))
B_DEV = profile("b", (1.0, 64, 100), (3.0, 8, 1000))
BS = profile("bs", (1.0, 64, 100), (1.0, 8, 1000))
LINK = LinkSpec(latency_s=0.0, rate_bps=512.0)
TASKS = (
    TaskSpec(task_id=0, device="a", index=0, arrival_s=0.0, sample=0),
    TaskSpec(task_id=1, device="b", index=0, arrival_s=0.0, sample=1),
)


def problem(
    *, workers: int = 1, memory_a: int = 10_000, memory_b: int = 10_000
) -> PlanningProblem:
    return PlanningProblem(
        device_profiles={"a": A_DEV, "b": B_DEV},
        bs_profile=BS,
        links={"a": LINK, "b": LINK},
        tasks=TASKS,
        scheduler="fcfs",
        workers=workers,
        device_memory_bytes={"a": memory_a, "b": memory_b},
    )


def delays(
    plan_problem: PlanningProblem, algorithm: str
) -> tuple[dict[str, int], list[float]]:
    plan = make_plan(algorithm, plan_problem)
    return dict(plan.cuts), [p.delay_s for p in plan.predictions]


def test_local_only() -> None:
    # a: 3.5, b: 4.0.
    plan = make_plan("local-only", problem())
    assert dict(plan.cuts) == {"a": 2, "b": 2}
    assert [p.delay_s for p in plan.predictions] == [3.5, 4.0]
    assert plan.total_delay_s == 7.5
    assert plan.algorithm == "local-only"


def test_offload_all() -> None:
    # Both inputs reach the BS at 1.0 and need 2 s each: a (task 0) 1 -> 3,
    # b 3 -> 5.
    assert delays(problem(), "offload-all") == ({"a": 0, "b": 0}, [3.0, 5.0])


def test_neurosurgeon_ignores_contention_and_breaks_ties_to_the_larger_cut() -> None:
    # Idle-system delay, head + transfer + BS tail:
    #   a: k=0 0 + 1 + 2 = 3, k=1 1 + 1 + 1 = 3, k=2 3.5   -> tie, k = 1
    #   b: k=0 3,             k=1 3,             k=2 4.0   -> tie, k = 1
    # Simulated: both reach the BS at 2 (head 0 -> 1, link 1 -> 2); a runs
    # 2 -> 3, b waits and runs 3 -> 4.
    plan = make_plan("neurosurgeon", problem())
    assert dict(plan.cuts) == {"a": 1, "b": 1}
    assert [p.delay_s for p in plan.predictions] == [3.0, 4.0]
    assert plan.predictions[1].bs_wait_s == 1.0
    assert plan.total_delay_s == 7.0


def test_greedy_moves_a_device_off_the_busy_bs() -> None:
    # From (a=1, b=1), total 7, every single change:
    #   a=2: a local 3.5, b alone at the BS 2 -> 3: 3        total 6.5
    #   a=0: a at BS 1, 1 -> 3: 3; b at 2 waits, 3 -> 4: 4   total 7
    #   b=2: a 3, b local 4                                  total 7
    #   b=0: b at BS 1, 1 -> 3: 3; a at 2 waits, 3 -> 4: 4   total 7
    # a=2 wins.  From (a=2, b=1), total 6.5:
    #   a=1: 7;  a=0: 3 + 4 = 7;  b=2: 3.5 + 4 = 7.5;
    #   b=0: b 1 -> 3: 3, a 3.5: 6.5, not lower -> stop.
    plan = make_plan("greedy", problem())
    assert dict(plan.cuts) == {"a": 2, "b": 1}
    assert [p.delay_s for p in plan.predictions] == [3.5, 3.0]
    assert plan.total_delay_s == 6.5
    assert plan.mean_delay_s == 3.25
    assert plan.max_delay_s == 3.5
    assert dict(plan.mean_delay_by_device_s) == {"a": 3.5, "b": 3.0}


def test_greedy_keeps_neurosurgeon_cuts_without_contention() -> None:
    # Two workers: at (1, 1) both run 2 -> 3, total 6.  a=0 or b=0 also give
    # 6 (one job 1 -> 3, the other 2 -> 3) but are not lower; a=2 gives 6.5.
    assert delays(problem(workers=2), "greedy") == ({"a": 1, "b": 1}, [3.0, 3.0])


def test_memory_excludes_a_cut() -> None:
    # a can hold 500 B: k = 2 needs 1100 B, so only k = 0, 1 remain.
    tight = problem(memory_a=500)
    assert tight.allowed_cuts("a") == (0, 1)
    assert tight.allowed_cuts("b") == (0, 1, 2)
    # Greedy loses its best move (a=2); a=0, b=0 and b=2 all give 7, so it
    # stays at the neurosurgeon cuts.
    assert delays(tight, "greedy") == ({"a": 1, "b": 1}, [3.0, 4.0])
    with pytest.raises(
        ConfigError,
        match=(
            r"algorithm 'local-only' gave device 'a' cut 2, whose head needs "
            r"1100 bytes \(weights 1100, peak activations 0\) but "
            r"device_memory_bytes is 500"
        ),
    ):
        make_plan("local-only", tight)


def test_memory_can_force_offloading() -> None:
    # b holds 50 B: even k = 1 (100 B) is too big; k = 0 needs none.
    tight = problem(memory_b=50)
    assert tight.allowed_cuts("b") == (0,)
    assert dict(make_plan("neurosurgeon", tight).cuts) == {"a": 1, "b": 0}


class Fixed:
    """A user-supplied algorithm that returns the cuts it was given."""

    def __init__(self, cuts: dict[str, object]) -> None:
        self.name = "fixed"
        self._cuts = cuts

    def __call__(self, plan_problem: PlanningProblem) -> dict[str, int]:
        return self._cuts  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("cuts", "message"),
    [
        ({"a": 1}, r"algorithm 'fixed' gave no cut for device 'b'"),
        (
            {"a": 1, "b": 1, "c": 0},
            r"algorithm 'fixed' gave cuts for unknown devices \['c'\]; "
            r"the devices are \['a', 'b'\]",
        ),
        ({"a": 3, "b": 1}, r"algorithm 'fixed' gave device 'a' cut 3, outside 0\.\.2"),
        ({"a": -1, "b": 1}, r"gave device 'a' cut -1, outside 0\.\.2"),
        ({"a": 1, "b": 1.5}, r"gave device 'b' cut 1\.5, which is not an integer"),
        ({"a": True, "b": 1}, r"gave device 'a' cut True, which is not an integer"),
    ],
)
def test_bad_algorithm_output_is_refused(cuts: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_plan(Fixed(cuts), problem())


def test_user_algorithm_is_accepted_and_simulated() -> None:
    plan = make_plan(Fixed({"b": 2, "a": 0}), problem())
    # a: input at the BS at 1, 1 -> 3; b local 4.
    assert plan.algorithm == "fixed"
    assert list(plan.cuts.items()) == [("a", 0), ("b", 2)]
    assert [p.delay_s for p in plan.predictions] == [3.0, 4.0]


def test_registry() -> None:
    assert list_algorithms() == (
        "annealing",
        "exact",
        "genetic",
        "greedy",
        "local-only",
        "neurosurgeon",
        "offload-all",
        "trend",
    )
    assert all(ALGORITHMS[name].name == name for name in list_algorithms())
    with pytest.raises(
        ConfigError,
        match=r"unknown algorithm 'best'; known: annealing, exact, genetic, greedy",
    ):
        make_plan("best", problem())


def test_plan_reports_every_objective() -> None:
    # offload-all: delays 3 and 5; total 8, max 5, mean 4, variance 1.
    plan = make_plan("offload-all", problem())
    assert plan.total_delay_s == 8.0
    assert plan.max_delay_s == 5.0
    assert plan.delay_variance_s2 == 1.0
    assert plan.objective_value("variance") == 1.0
    assert plan.objective_value("total") == 8.0


def test_greedy_follows_the_objective() -> None:
    # Variance, from (1, 1) (delays 3, 4: variance 0.25): a=2 gives delays
    # 3.5, 3 (0.0625); a=0 3, 4; b=2 3, 4; b=0 4, 3 -> a=2.  From (2, 1):
    # b=0 (3.5, 3) and b=2 (3.5, 4) tie at 0.0625 -> stop.
    fair = replace(problem(), objective="variance")
    plan = make_plan("greedy", fair)
    assert dict(plan.cuts) == {"a": 2, "b": 1}
    assert plan.delay_variance_s2 == 0.0625


def test_unknown_objective_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown objective 'mean'; known: total, variance, max"
    ):
        replace(problem(), objective="mean")  # type: ignore[arg-type]


EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "my_algorithm.py"


@pytest.mark.parametrize("attribute", ["slowest_offload", "SlowestOffload"])
def test_example_user_algorithm_runs_through_make_plan(attribute: str) -> None:
    # a's whole model takes 3.5 s, b's 4 s: b is the slower half and offloads,
    # a keeps its largest allowed cut, 2.  a local 3.5; b at the BS 1 -> 3.
    reference = f"{EXAMPLE}:{attribute}"
    plan = make_plan(reference, problem())
    assert plan.algorithm == reference
    assert dict(plan.cuts) == {"a": 2, "b": 0}
    assert [p.delay_s for p in plan.predictions] == [3.5, 3.0]
    assert load_algorithm(reference).name == reference


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_user_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError, match=rf"algorithm file {missing} does not exist"):
        load_algorithm(f"{missing}:plan")

    broken = write(tmp_path / "broken.py", "import no_such_module_here\n")
    with pytest.raises(
        ConfigError,
        match=(
            rf"algorithm file {broken} raised ModuleNotFoundError while importing: "
            r"No module named 'no_such_module_here'"
        ),
    ):
        load_algorithm(f"{broken}:plan")

    plain = write(
        tmp_path / "plain.py",
        "LIMIT = 3\n"
        "def crash(problem):\n    raise RuntimeError('out of ideas')\n"
        "def words(problem):\n    return ['a', 'b']\n"
        "def half(problem):\n    return {'a': 1, 'b': 0.5}\n",
    )
    with pytest.raises(ConfigError, match=rf"algorithm file {plain} has no attribute"):
        load_algorithm(f"{plain}:missing")
    with pytest.raises(ConfigError, match=r"plain.py:LIMIT' is a int, not callable"):
        load_algorithm(f"{plain}:LIMIT")
    with pytest.raises(
        ConfigError, match=r"plain.py:crash' raised RuntimeError: out of ideas"
    ):
        make_plan(f"{plain}:crash", problem())
    with pytest.raises(ConfigError, match=r"plain.py:words' returned list, not a"):
        make_plan(f"{plain}:words", problem())
    # The output is checked as every algorithm's is.
    with pytest.raises(ConfigError, match=r"gave device 'b' cut 0\.5, which is not"):
        make_plan(f"{plain}:half", problem())


def test_entry_point_algorithms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A distribution on sys.path that declares two entry points.
    write(
        tmp_path / "toy_cuts.py", "def offload(problem):\n    return {'a': 0, 'b': 0}\n"
    )
    info = tmp_path / "toy_cuts-1.0.dist-info"
    info.mkdir()
    write(info / "METADATA", "Metadata-Version: 2.1\nName: toy-cuts\nVersion: 1.0\n")
    write(
        info / "entry_points.txt",
        "[splitlab.algorithms]\n"
        "offload = toy_cuts:offload\n"
        "ghost = toy_cuts_missing:offload\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    plan = make_plan("entrypoint:offload", problem())
    assert plan.algorithm == "entrypoint:offload"
    assert dict(plan.cuts) == {"a": 0, "b": 0}
    with pytest.raises(
        ConfigError,
        match=r"no entry point 'nothing' in group splitlab.algorithms; installed: ",
    ):
        load_algorithm("entrypoint:nothing")
    with pytest.raises(
        ConfigError,
        match=r"entry point 'ghost' \(toy_cuts_missing:offload\) raised "
        r"ModuleNotFoundError while loading",
    ):
        load_algorithm("entrypoint:ghost")


def test_scenario_accepts_a_user_algorithm_reference() -> None:
    scenario = load_scenario("default").with_overrides(
        algorithm="docs/examples/my_algorithm.py:slowest_offload"
    )
    assert scenario.algorithm == "docs/examples/my_algorithm.py:slowest_offload"
    with pytest.raises(
        ConfigError, match=r"unknown algorithm 'best'; known: annealing"
    ):
        load_scenario("default").with_overrides(algorithm="best")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": ()}, "the planning problem has no tasks"),
        ({"workers": 0}, "workers must be at least 1, got 0"),
        ({"scheduler": "lifo"}, "unknown scheduler 'lifo'"),
        ({"links": {"a": LINK}}, "device 'b' has no link"),
        ({"device_memory_bytes": {"a": 1}}, "device 'b' has no device_memory_bytes"),
        (
            {"tasks": (*TASKS, replace(TASKS[0], task_id=2, device="c"))},
            "task 2 comes from device 'c', which has no profile",
        ),
        (
            {"device_profiles": {"a": A_DEV, "b": profile("b", (1.0, 8, 0))}},
            "device 'b' profile has 1 stages, the BS profile has 2",
        ),
    ],
)
def test_inconsistent_problem_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(problem(), **change)


def test_problem_mappings_are_read_only_copies() -> None:
    memory = {"a": 10, "b": 10}
    built = replace(problem(), device_memory_bytes=memory)
    memory["a"] = 0
    assert built.device_memory_bytes["a"] == 10
    with pytest.raises(TypeError):
        built.device_memory_bytes["a"] = 0  # type: ignore[index]


def test_greedy_relieves_a_busy_bs_on_a_larger_workload() -> None:
    # Five devices, 20 Poisson tasks each (mean gap 50 ms), three stages.
    # Idle-system delay: k=0 27 ms, k=1 47 ms, k=2 84 ms, k=3 110 ms, so
    # neurosurgeon sends every input, asking 22 ms of the one BS worker per
    # task at 100 tasks/s: overloaded.  Local-only overloads the devices
    # (110 ms of head per 50 ms).
    dev = profile("d", (0.02, 4096, 10), (0.05, 1024, 10), (0.04, 16, 10))
    bs = profile("bs", (0.004, 4096, 10), (0.01, 1024, 10), (0.008, 16, 10))
    devices = [f"d{i}" for i in range(5)]
    busy = PlanningProblem(
        device_profiles=dict.fromkeys(devices, dev),
        bs_profile=bs,
        links=dict.fromkeys(devices, LinkSpec(latency_s=0.005, rate_bps=8e6)),
        tasks=generate_tasks(
            devices,
            tasks_per_device=20,
            period_s=0.05,
            arrivals="poisson",
            num_samples=100,
            seed=3,
        ),
        scheduler="sjf",
        workers=1,
        device_memory_bytes=dict.fromkeys(devices, 1000),
    )
    start = make_plan("neurosurgeon", busy)
    assert set(start.cuts.values()) == {0}
    greedy = make_plan("greedy", busy)
    assert make_plan("greedy", busy) == greedy
    assert len(set(greedy.cuts.values())) > 1
    for name in ("neurosurgeon", "local-only", "offload-all"):
        assert greedy.total_delay_s < 0.5 * make_plan(name, busy).total_delay_s
