"""Whole runs: real processes, real sockets, real SQLite."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from splitlab.experiment import run_scenario
from splitlab.report import summarise
from splitlab.results import ResultStore
from splitlab.scenario import Scenario, parse_scenario
from splitlab.testbed import LocalTestbed

pytestmark = pytest.mark.slow
NAMES = ("d1", "d2", "d3")


def _scenario(**changes: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "small",
        "seed": 2,
        "model": "alexnet-small",
        "training": {"epochs": 1},
        "workload": {"tasks_per_device": 6, "period_ms": 60},
        "profiling": {"warmup": 2, "repeats": 5},
        "algorithm": "greedy",
        "devices": [
            {"name": "d1", "cpu_share": 0.5,
             "link": {"latency_ms": 2, "rate_mbps": 100}},
            {"name": "d2", "cpu_share": 0.25,
             "link": {"latency_ms": 20, "rate_mbps": 10, "jitter_ms": 1}},
            {"name": "d3", "cpu_share": 0.25,
             "link": {"latency_ms": 40, "rate_mbps": 5}},
        ],
    }  # fmt: skip
    data.update(changes)
    return parse_scenario(data, source="test")


@pytest.mark.parametrize("algorithm", ["offload-all", "local-only", "greedy"])
def test_every_task_is_recorded_and_equals_the_unsplit_model(
    tmp_path: Path, algorithm: str
) -> None:
    scenario = _scenario(algorithm=algorithm, scheduler="rr")
    events: list[dict[str, Any]] = []
    outcome = run_scenario(scenario, workspace=tmp_path, on_event=events.append)
    assert outcome.status == "completed", outcome.reason

    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
        cuts = store.cuts(outcome.run_id)
        nodes = store.nodes(outcome.run_id)
        summary = summarise(store, outcome.run_id)
        profiles = store.profiles(outcome.run_id)
        slices = store.slices(outcome.run_id)

    assert len(tasks) == 18
    assert {task.device for task in tasks} == {"d1", "d2", "d3"}
    assert all(task.matches_unsplit for task in tasks)
    if algorithm == "offload-all":
        assert set(cuts.values()) == {0}
    if algorithm == "local-only":
        assert set(cuts.values()) == {11}
    for task in tasks:
        parts = (task.device_wait_s + task.device_s + task.transmission_s
                 + task.bs_wait_s + task.bs_s)  # fmt: skip
        assert parts == pytest.approx(task.delay_s, abs=1e-6)
        assert task.delay_s > 0
        assert np.frombuffer(task.logits, dtype=np.float32).shape == (10,)
        if task.cut == 0:
            # The link cannot deliver faster than its latency plus s/R.
            link = scenario.devices[int(task.device[1]) - 1].link.spec()
            assert task.transmission_s >= link.transfer_s(task.cut_bytes) * 0.95
            assert task.cut_bytes == 3 * 32 * 32 * 4
    # The BS schedule: round robin runs one stage a turn, every offloaded
    # task's tail is covered exactly once, and one worker never overlaps.
    for task in tasks:
        own = [piece for piece in slices if piece.task_id == task.task_id]
        assert sum(piece.stages for piece in own) == 11 - task.cut
        assert all(piece.stages == 1 for piece in own)
        assert sorted(p.first_stage for p in own) == list(range(task.cut, 11))
    ends = [(piece.start_s, piece.end_s) for piece in slices]
    assert all(end <= later_start + 1e-6 for (_, end), (later_start, _) in
               itertools.pairwise(ends))  # fmt: skip
    assert set(profiles) == {"bs", "d1", "d2", "d3"}
    assert {node.limit_mechanism for node in nodes if node.role == "device"} == {
        outcome.limit_mechanism
    }
    assert summary.matched == summary.verified == 18
    assert summary.rows[-1].tasks == 18
    kinds = [event["event"] for event in events]
    for expected in ("listening", "connected", "profiled", "plan", "verified"):
        assert expected in kinds


def test_killing_one_device_keeps_the_others_and_marks_the_run(
    tmp_path: Path,
) -> None:
    scenario = _scenario(
        algorithm="offload-all", workload={"tasks_per_device": 12, "period_ms": 80}
    )
    testbeds: list[LocalTestbed] = []
    killed = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if (
            event["event"] == "task"
            and event["node"] == "d1"
            and event["done"] == 3
            and not killed.is_set()
        ):
            testbeds[0].kill_device("d2")
            killed.set()

    outcome = run_scenario(
        scenario, workspace=tmp_path, on_event=on_event, on_started=testbeds.append
    )
    assert killed.is_set()
    assert outcome.status == "incomplete"
    assert outcome.reason is not None and "d2: disconnected" in outcome.reason

    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
        assert store.run(outcome.run_id).status == "incomplete"
    by_device = {name: [t for t in tasks if t.device == name] for name in NAMES}
    assert len(by_device["d1"]) == 12
    assert len(by_device["d3"]) == 12
    assert len(by_device["d2"]) < 12


def test_cli_runs_a_scenario_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    scenario = _scenario(workload={"tasks_per_device": 2, "period_ms": 50})
    path = tmp_path / "s.yaml"
    path.write_text(scenario.to_yaml())
    result = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "run", str(path), "--algorithm",
         "neurosurgeon", "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "neurosurgeon" in result.stdout
    assert "equals the unsplit model for 6 of 6 tasks" in result.stdout

    # Planning alone reuses the profiles the run measured.
    result = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "plan", str(path), "--algorithm",
         "offload-all", "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "profiles: measured in run 1" in result.stdout
    assert "plan by offload-all" in result.stdout

    broken = yaml.safe_load(scenario.to_yaml())
    broken["devices"][1]["link"]["rate_mbps"] = 0
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "run", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    assert "devices[1].link.rate_mbps" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _write_cifar_binary(folder: Path, *, per_batch: int, test: int) -> None:
    """A CIFAR-10 folder in the standard binary layout, with seeded pixels."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
             "horse", "ship", "truck"]  # fmt: skip
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    files = [f"data_batch_{index}.bin" for index in range(1, 6)]
    for name, count in [
        *((file, per_batch) for file in files),
        ("test_batch.bin", test),
    ]:
        labels = rng.integers(0, 10, size=(count, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.hstack([labels, pixels]).tobytes())


def test_a_run_on_a_local_cifar10_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_binary(folder, per_batch=16, test=12)
    scenario = _scenario(
        data={"dataset": "cifar10", "dir": str(folder)},
        workload={"tasks_per_device": 4, "period_ms": 50},
        seed=11,
    )
    outcome = run_scenario(scenario, workspace=tmp_path)
    assert outcome.status == "completed", outcome.reason
    assert outcome.weights.trained_now
    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
    assert len(tasks) == 12
    # Tasks draw from the 12 test images only, and their labels are the file's.
    assert {task.sample for task in tasks} == set(range(12))
    labels = np.frombuffer((folder / "test_batch.bin").read_bytes(), np.uint8)[::3073]
    assert all(task.label == labels[task.sample] for task in tasks)
    assert all(task.matches_unsplit for task in tasks)


def test_deadlines_and_priorities_reach_the_base_station(tmp_path: Path) -> None:
    scenario = _scenario(
        algorithm="offload-all",
        scheduler="edf",
        workload={"tasks_per_device": 6, "period_ms": 40, "deadline_ms": 30},
    )
    outcome = run_scenario(scenario, workspace=tmp_path)
    assert outcome.status == "completed", outcome.reason
    with ResultStore(outcome.store) as store:
        summary = summarise(store, outcome.run_id)
        tasks = store.tasks(outcome.run_id)
        predictions = store.predictions(outcome.run_id)
    late = sum(1 for task in tasks if task.delay_s > 0.030)
    assert summary.deadline_misses == late
    # d3's link alone (40 ms) breaks a 30 ms deadline for every one of its tasks.
    assert late >= 6
    assert len(predictions) == 18


def test_a_user_algorithm_file_runs_end_to_end(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "docs" / "examples" / "my_algorithm.py"
    scenario = _scenario(
        algorithm=f"{example}:slowest_offload",
        workload={"tasks_per_device": 3, "period_ms": 60},
    )
    outcome = run_scenario(scenario, workspace=tmp_path)
    assert outcome.status == "completed", outcome.reason
    with ResultStore(outcome.store) as store:
        cuts = store.cuts(outcome.run_id)
        run = store.run(outcome.run_id)
        assert len(store.tasks(outcome.run_id)) == 9
    # The slower half of the three devices (one) offloads; the others run the
    # whole model, as far as their memory allows (all of it here).
    assert sorted(cuts.values()) == [0, 11, 11]
    assert run.algorithm.endswith("my_algorithm.py:slowest_offload")


def test_a_user_model_file_runs_end_to_end(tmp_path: Path) -> None:
    source = tmp_path / "mine.py"
    source.write_text(
        "from torch import nn\n\n"
        "def small(classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.MaxPool2d(4), nn.Flatten(),\n"
        "                         nn.Linear(4 * 8 * 8, classes))\n"
    )
    scenario = _scenario(
        model=f"{source}:small",
        algorithm="greedy",
        workload={"tasks_per_device": 3, "period_ms": 60},
    )
    outcome = run_scenario(scenario, workspace=tmp_path / "ws")
    assert outcome.status == "completed", outcome.reason
    assert outcome.weights.path.name.startswith("mine.small-")
    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
        profiles = store.profiles(outcome.run_id)
    assert len(tasks) == 9
    assert all(task.matches_unsplit for task in tasks)
    # Five stages cut from the user's Sequential, profiled on every node.
    assert {profile.num_stages for profile in profiles.values()} == {5}
