"""Exported tables read back equal to what the store holds, in CSV and Parquet."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from splitlab.errors import ConfigError
from splitlab.export import (
    SCHEMAS,
    export_runs,
    read_export,
    run_frames,
    tasks_frame,
)
from splitlab.profile import NodeProfile, StageProfile
from splitlab.results import (
    NodeRecord,
    PredictionRecord,
    ResultStore,
    SliceRecord,
    TaskRecord,
)


def _fill(store: ResultStore, *, name: str, finish: bool) -> int:
    run_id = store.create_run(
        name=name, scenario_yaml="name: x\nseed: 3\n", scenario_hash="h",
        seed=3, algorithm="greedy", scheduler="rr",
        environment={"torch": "2.13.0", "revision": None},
    )  # fmt: skip
    store.record_node(run_id, NodeRecord("bs", "bs", 10, None, None, None))
    store.record_node(
        run_id,
        NodeRecord("d1", "device", 11, 0.25, 2**30, "cgroup-v1", ("a", "b"),
                   {"latency_ms": 5.0, "rate_mbps": 20.0, "jitter_ms": 0.5}),
    )  # fmt: skip
    stages = (StageProfile("conv1", 1e-3, 2e-3, 4096, 100),
              StageProfile("fc", 0.1 / 3, 0.05, 40, 2000))  # fmt: skip
    store.record_profile(run_id, NodeProfile("d1", "m", 12288, stages, 2, 5))
    store.record_plan(
        run_id,
        {"d1": 1},
        [PredictionRecord(i, "d1", i, 1, 0.08 * i, 0, 1e-3, 2e-3, 0, 3e-4, 3.3e-3)
         for i in range(3)],
    )  # fmt: skip
    for i in range(3):
        store.record_task(
            run_id,
            TaskRecord(
                task_id=i, device="d1", idx=i, sample=40 + i, label=i, cut=1,
                arrival_s=0.08 * i, device_wait_s=0.0, device_s=1.1e-3 * (i + 1),
                transmission_s=2.2e-3, bs_wait_s=1e-4 * i, bs_s=3.1e-4,
                delay_s=1 / 7 + i, cut_bytes=4096, prediction=i,
                logits=b"\x00" * 40, completed_at=1.7e9 + i,
            ),
            [SliceRecord(i, "d1", 0, 1, 1, 0.1 * i + 0.01, 0.1 * i + 0.02)],
        )  # fmt: skip
    # One task verified as matching, one as differing, one never verified.
    store.record_verification(run_id, [(0, True, 0.0), (1, False, 0.25)])
    if finish:
        store.finish_run(run_id, "completed", None)
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    store = ResultStore(tmp_path / "results.sqlite")
    _fill(store, name="first", finish=True)
    _fill(store, name="second", finish=False)
    return store


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_reads_back_equal_to_the_store(
    store: ResultStore, tmp_path: Path, fmt: str
) -> None:
    written = export_runs(store, [1, 2], tmp_path / "out", fmt=fmt)  # type: ignore[arg-type]
    assert [path.name for path in written] == [f"{t}.{fmt}" for t in SCHEMAS]

    back = read_export(tmp_path / "out", fmt=fmt)  # type: ignore[arg-type]
    for table, frame in run_frames(store, [1, 2]).items():
        pd.testing.assert_frame_equal(back[table], frame, check_exact=True)

    # Against the store's own records, not only the frames made from them.
    tasks = back["tasks"]
    assert len(tasks) == 6
    for run_id in (1, 2):
        for record in store.tasks(run_id):
            row = tasks[(tasks.run_id == run_id) & (tasks.task_id == record.task_id)]
            expected = asdict(record)
            del expected["logits"]
            got = row.iloc[0].to_dict()
            for column, value in expected.items():
                if value is None:
                    assert pd.isna(got[column]), column
                else:
                    assert got[column] == value, column
    assert tasks.loc[0, "delay_s"] == 1 / 7  # full precision survives CSV
    assert list(tasks.matches_unsplit.iloc[:3]) == [True, False, pd.NA]

    runs = back["runs"]
    assert list(runs.name) == ["first", "second"]
    assert runs.status.tolist() == ["completed", "running"]
    assert pd.isna(runs.loc[1, "finished_at"])
    assert pd.isna(runs.loc[0, "reason"])
    assert json.loads(runs.loc[0, "environment_json"]) == {
        "revision": None,
        "torch": "2.13.0",
    }
    assert runs.loc[0, "scenario_yaml"] == "name: x\nseed: 3\n"

    nodes = back["nodes"]
    device = nodes[(nodes.run_id == 1) & (nodes.node == "d1")].iloc[0]
    assert (device.latency_ms, device.rate_mbps, device.jitter_ms) == (5.0, 20.0, 0.5)
    assert pd.isna(nodes[nodes.node == "bs"].iloc[0].rate_mbps)

    profiles = back["stage_profiles"]
    assert profiles.median_s.tolist()[:2] == [1e-3, 0.1 / 3]
    assert back["slices"].start_s.tolist()[:3] == [0.01, 0.11, 0.21000000000000002]
    assert back["predictions"].delay_s.tolist() == [3.3e-3] * 6
    assert back["cuts"].cut.tolist() == [1, 1]


def test_frames_have_the_declared_columns_and_dtypes(store: ResultStore) -> None:
    frame = tasks_frame(store, 1)
    assert list(frame.columns) == list(SCHEMAS["tasks"])
    assert {c: str(t) for c, t in frame.dtypes.items()} == SCHEMAS["tasks"]
    assert frame.delay_s.sum() == pytest.approx(3 / 7 + 3)


def test_empty_selection_writes_empty_tables(
    store: ResultStore, tmp_path: Path
) -> None:
    export_runs(store, [], tmp_path, fmt="csv")
    back = read_export(tmp_path, fmt="csv")
    assert all(frame.empty for frame in back.values())
    assert list(back["slices"].columns) == list(SCHEMAS["slices"])


def test_reading_a_folder_without_the_tables_names_the_missing_file(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"has no runs\.parquet"):
        read_export(tmp_path, fmt="parquet")
