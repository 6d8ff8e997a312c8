"""Sweep files, field paths, resuming an interrupted sweep, and reruns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from splitlab.errors import ConfigError
from splitlab.results import ResultStore
from splitlab.scenario import Scenario, parse_scenario
from splitlab.sweep import (
    SweepEvent,
    SweepLog,
    apply_overrides,
    environment_changes,
    expand,
    latest_completed,
    load_sweep,
    parse_sweep,
    rerun,
    run_sweep,
)

BASE: dict[str, Any] = {
    "name": "tiny",
    "model": "alexnet-small",
    "training": {"epochs": 1},
    "workload": {"tasks_per_device": 2, "period_ms": 50},
    "profiling": {"warmup": 1, "repeats": 2},
    "devices": [
        {"name": "d1", "cpu_share": 0.5, "link": {"latency_ms": 1, "rate_mbps": 100}},
        {"name": "d2", "cpu_share": 0.5, "link": {"latency_ms": 9, "rate_mbps": 10}},
    ],
}


def _base() -> Scenario:
    return parse_scenario(BASE, source="test")


def _spec(grid: dict[str, Any], **extra: Any) -> Any:
    data = {"name": "s", "scenario": BASE, "grid": grid, **extra}
    return parse_sweep(data, source="s.yaml", base_dir=Path("."))


class FakeRunner:
    """Records a run per call; fails or ends incomplete when told to."""

    def __init__(
        self, *, interrupt_at: int | None = None, incomplete: set[int] = frozenset()
    ) -> None:
        self.calls: list[Scenario] = []
        self.interrupt_at = interrupt_at
        self.incomplete = set(incomplete)

    def __call__(self, scenario: Scenario, workspace: Path) -> int:
        call = len(self.calls)
        self.calls.append(scenario)
        with ResultStore(workspace / "results.sqlite") as store:
            run_id = store.create_run(
                name=scenario.name, scenario_yaml=scenario.to_yaml(),
                scenario_hash=scenario.fingerprint(), seed=scenario.seed,
                algorithm=scenario.algorithm, scheduler=scenario.scheduler,
                environment={},
            )  # fmt: skip
            if call == self.interrupt_at:
                # What run_scenario leaves behind when Ctrl-C arrives mid-run.
                store.finish_run(run_id, "incomplete", "interrupted")
                raise KeyboardInterrupt
            failed = call in self.incomplete
            store.finish_run(
                run_id,
                "incomplete" if failed else "completed",
                "d1 died" if failed else None,
            )
        return run_id


def test_paths_set_every_device_one_by_position_and_one_by_name() -> None:
    base = _base()
    every = apply_overrides(base, {"devices[*].link.latency_ms": 33})
    assert [d.link.latency_ms for d in every.devices] == [33, 33]
    assert [d.link.rate_mbps for d in every.devices] == [100, 10]

    by_index = apply_overrides(base, {"devices[1].cpu_share": 0.125})
    by_name = apply_overrides(base, {"devices[d2].cpu_share": 0.125})
    assert by_index == by_name
    assert [d.share for d in by_name.devices] == [0.5, 0.125]

    whole = apply_overrides(
        base, {"devices[*].link": {"latency_ms": 4, "rate_mbps": 2}, "seed": 9}
    )
    assert [(d.link.latency_ms, d.link.rate_mbps) for d in whole.devices] == [
        (4, 2),
        (4, 2),
    ]
    assert whole.seed == 9
    assert apply_overrides(base, {"workload.period_ms": 7}).workload.period_ms == 7


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("devices[5].cpu_share", 1, r"index 5 but 'devices' has 2 elements"),
        ("devices[d9].cpu_share", 1, r"named 'd9' \(names: d1, d2\)"),
        ("workload[*].period_ms", 1, r"'workload' is not a list"),
        ("workload.perod_ms", 1, r"workload\.perod_ms: unknown key"),
        ("devices[*].link.rate_mbps", -1, r"greater than or equal to 0.001 \(got -1\)"),
        ("seed.x", 1, r"'x' is inside a value"),
    ],
)  # fmt: skip
def test_bad_paths_and_values_name_the_path(
    path: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(_base(), {path: value}, source="cell")


def test_grid_expands_in_order_with_the_last_field_fastest() -> None:
    spec = _spec(
        {"algorithm": ["greedy", "local-only"], "seed": [1, 2, 3]},
        set={"workload.tasks_per_device": 4},
    )
    cells = expand(spec)
    assert [(c.scenario.algorithm, c.scenario.seed) for c in cells] == [
        ("greedy", 1), ("greedy", 2), ("greedy", 3),
        ("local-only", 1), ("local-only", 2), ("local-only", 3),
    ]  # fmt: skip
    assert all(c.scenario.workload.tasks_per_device == 4 for c in cells)
    assert cells[4].label == "algorithm=local-only, seed=2"
    assert len({c.scenario.fingerprint() for c in cells}) == 6


def test_sweep_file_resolves_its_scenario_beside_it(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sw.yaml").write_text(
        "name: lat\nscenario: base.yaml\ngrid:\n  devices[*].link.latency_ms: [5, 50]\n"
    )
    spec = load_sweep(tmp_path / "sw.yaml")
    assert spec.name == "lat"
    assert [c.scenario.devices[1].link.latency_ms for c in expand(spec)] == [5, 50]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "s", "scenario": BASE}, r"grid: give a non-empty mapping"),
        ({"name": "s", "scenario": BASE, "grid": {"seed": []}}, r"grid\.seed: give a"),
        ({"name": "s s", "scenario": BASE, "grid": {"seed": [1]}}, r"name: give"),
        ({"name": "s", "scenario": 3, "grid": {"seed": [1]}}, r"scenario: give"),
        ({"name": "s", "scenario": BASE, "grid": {}, "x": 1}, r"unknown key 'x'"),
        ({"name": "s", "scenario": BASE, "grid": {"algorithm": ["nope"]}},
         r"unknown algorithm 'nope'"),
    ],
)  # fmt: skip
def test_bad_sweep_files_are_refused_before_anything_runs(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        expand(parse_sweep(data, source="s.yaml", base_dir=Path(".")))


def test_an_interrupted_sweep_resumes_with_only_the_unfinished_cells(
    tmp_path: Path,
) -> None:
    spec = _spec({"algorithm": ["greedy", "offload-all"], "seed": [1, 2, 3]})
    first = FakeRunner(interrupt_at=2, incomplete={1})
    events: list[SweepEvent] = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, workspace=tmp_path, runner=first, on_event=events.append)
    assert [e.kind for e in events] == ["planned", "started", "finished", "started",
                                        "finished", "started"]  # fmt: skip
    assert events[0].to_run == 6
    assert events[4].status == "incomplete"

    # Cell 0 completed; cell 1 ended incomplete, cell 2 was interrupted: both
    # run again, with cells 3..5 that never started.
    second = FakeRunner()
    result = run_sweep(spec, workspace=tmp_path, runner=second)
    assert result.skipped == 1
    assert [(s.algorithm, s.seed) for s in second.calls] == [
        ("greedy", 2), ("greedy", 3),
        ("offload-all", 1), ("offload-all", 2), ("offload-all", 3),
    ]  # fmt: skip
    assert result.incomplete == ()
    assert result.run_ids[0] == 1  # the first invocation's run
    assert sorted(result.run_ids) == list(range(6))

    # Nothing is left: a third invocation runs nothing.
    third = FakeRunner()
    assert run_sweep(spec, workspace=tmp_path, runner=third).skipped == 6
    assert third.calls == []

    with SweepLog(tmp_path / "results.sqlite") as log:
        runs = log.runs("s")
        assert log.sweeps() == ["s"]
    # Tagged: 2 from the first invocation (the interrupted run is not), 5 after.
    assert [(r.cell, r.status) for r in runs] == [
        (0, "completed"), (1, "incomplete"),
        (1, "completed"), (2, "completed"), (3, "completed"), (4, "completed"),
        (5, "completed"),
    ]  # fmt: skip
    assert runs[0].params == {"algorithm": "greedy", "seed": 1}
    assert [r.cell for r in latest_completed(runs)] == [0, 1, 2, 3, 4, 5]


def test_a_changed_base_scenario_reruns_the_cells(tmp_path: Path) -> None:
    run_sweep(_spec({"seed": [1, 2]}), workspace=tmp_path, runner=FakeRunner())
    changed = _spec({"seed": [1, 2]}, set={"workload.period_ms": 60})
    runner = FakeRunner()
    assert run_sweep(changed, workspace=tmp_path, runner=runner).skipped == 0
    assert [s.workload.period_ms for s in runner.calls] == [60, 60]


def test_rerun_repeats_the_stored_scenario_and_seed(tmp_path: Path) -> None:
    runner = FakeRunner()
    original = apply_overrides(_base(), {"seed": 17, "algorithm": "local-only"})
    run_id = runner(original, tmp_path)
    new_id = rerun(tmp_path, run_id, runner=runner)
    assert new_id == run_id + 1
    assert runner.calls[1] == original
    with ResultStore(tmp_path / "results.sqlite") as store:
        assert store.run(new_id).seed == 17
        assert store.events(new_id)[-1][1:] == ("splitlab", "rerun", '{"of": 1}')
    with pytest.raises(ConfigError, match="no run 99"):
        rerun(tmp_path, 99, runner=runner)


def test_environment_changes_lists_only_differences() -> None:
    assert environment_changes(
        {"torch": "2.13.0", "revision": "abc", "cpus": 2},
        {"torch": "2.13.0", "revision": "def", "python": "3.11.9", "cpus": 2},
    ) == {"python": (None, "3.11.9"), "revision": ("abc", "def")}


@pytest.mark.slow
def test_a_real_sweep_runs_and_resumes(tmp_path: Path) -> None:
    spec = _spec({"algorithm": ["offload-all", "local-only"]})
    result = run_sweep(spec, workspace=tmp_path)
    assert result.incomplete == ()
    with ResultStore(tmp_path / "results.sqlite") as store:
        cuts = [store.cuts(result.run_ids[i]) for i in (0, 1)]
        assert cuts == [{"d1": 0, "d2": 0}, {"d1": 11, "d2": 11}]
        assert len(store.tasks(result.run_ids[0])) == 4
    assert run_sweep(spec, workspace=tmp_path).skipped == 2
