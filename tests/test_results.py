"""The SQLite results store keeps what it is given, across connections."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from splitlab.errors import ConfigError
from splitlab.profile import NodeProfile, StageProfile
from splitlab.results import NodeRecord, PredictionRecord, ResultStore, TaskRecord


def _task(task_id: int, device: str = "d1") -> TaskRecord:
    return TaskRecord(
        task_id=task_id, device=device, idx=task_id, sample=7, label=3, cut=2,
        arrival_s=0.1 * task_id, device_wait_s=0.0, device_s=0.01,
        transmission_s=0.02, bs_wait_s=0.003, bs_s=0.004, delay_s=0.037,
        cut_bytes=4096, prediction=3, logits=b"\x00" * 40, completed_at=1.0,
    )  # fmt: skip


def _run(store: ResultStore) -> int:
    return store.create_run(
        name="t", scenario_yaml="name: t\n", scenario_hash="abc", seed=1,
        algorithm="greedy", scheduler="fcfs", environment={"torch": "x"},
    )  # fmt: skip


def test_tasks_written_by_threads_are_all_read_back_by_another_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    run_id = _run(store)
    lock = threading.Lock()

    def write(offset: int) -> None:
        for index in range(25):
            with lock:
                store.record_task(run_id, _task(offset + index))

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with ResultStore(path) as reader:
        tasks = reader.tasks(run_id)
        assert [t.task_id for t in tasks] == sorted(
            k * 100 + i for k in range(4) for i in range(25)
        )
        assert tasks[0] == _task(0)
    store.close()


def test_runs_profiles_plans_nodes_and_verification_round_trip(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_id = _run(store)
        assert store.run(run_id).status == "running"
        profile = NodeProfile(
            node="d1", model="m", input_bytes=12,
            stages=(
                StageProfile("a", 0.1, 0.2, 8, 4),
                StageProfile("b", 0.3, 0.4, 4, 0),
            ),
            warmup=1, repeats=3,
        )  # fmt: skip
        store.record_profile(run_id, profile)
        assert store.profiles(run_id) == {"d1": profile}

        prediction = PredictionRecord(0, "d1", 0, 1, 0.0, 0.0, 0.1, 0.2, 0.0, 0.3, 0.6)
        store.record_plan(run_id, {"d1": 1}, [prediction])
        assert store.cuts(run_id) == {"d1": 1}
        assert store.predictions(run_id) == [prediction]

        node = NodeRecord("d1", "device", 42, 0.25, 2**30, "cgroup-v1",
                          ("echo 2500 > x",), {"latency_ms": 5.0})  # fmt: skip
        store.record_node(run_id, node)
        assert store.nodes(run_id) == [node]

        store.record_task(run_id, _task(0))
        store.record_verification(run_id, [(0, True, 0.0)])
        assert store.tasks(run_id)[0].matches_unsplit is True

        store.finish_run(run_id, "incomplete", "d2: disconnected")
        store.finish_run(run_id, "completed", None)
        record = store.run(run_id)
        assert (record.status, record.reason) == ("incomplete", "d2: disconnected")
        assert record.environment == {"torch": "x"}
        assert store.latest_run_id() == run_id


def test_missing_run_and_unopenable_store_are_named(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ConfigError, match=r"no run 99 in .*r\.sqlite"):
            store.run(99)
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(ConfigError, match="cannot open results store"):
        ResultStore(tmp_path / "dir.sqlite")
