"""Faults: killed nodes and a killed CLI lose no finished task and leave nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from splitlab.experiment import run_scenario
from splitlab.limit import detect_capabilities
from splitlab.results import ResultStore
from splitlab.scenario import Scenario, parse_scenario
from splitlab.testbed import LocalTestbed, find_leftovers

pytestmark = pytest.mark.slow


# fmt: off
def _scenario(tasks: int, period_ms: float) -> Scenario:
    return parse_scenario(
        {
            "name": "faults",
            "seed": 2,
            "model": "alexnet-small",
            "training": {"epochs": 1},
            "workload": {"tasks_per_device": tasks, "period_ms": period_ms},
            "profiling": {"warmup": 1, "repeats": 3},
            "algorithm": "offload-all",
            "devices": [
                {
                    "name": "d1",
                    "cpu_share": 0.5,
                    "link": {"latency_ms": 2, "rate_mbps": 100},
                },
                {
                    "name": "d2",
                    "cpu_share": 0.25,
                    "link": {"latency_ms": 10, "rate_mbps": 20},
                },
            ],
        },
        source="test",
    )
# fmt: on


def _groups(prefix: str) -> list[Path]:
    capabilities = detect_capabilities()
    roots = [capabilities.cgroup_v1_cpu_path, capabilities.cgroup_v1_memory_path,
             capabilities.cgroup_v2_path]  # fmt: skip
    return [
        group
        for root in roots
        if root is not None
        for group in root.rglob(f"splitlab-{prefix}-*")
    ]


def test_killing_the_base_station_keeps_finished_tasks(tmp_path: Path) -> None:
    testbeds: list[LocalTestbed] = []
    recorded_before_kill: list[int] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "task" and event["node"] == "d1" and event["done"] == 3:
            station = testbeds[0].station
            assert station is not None
            os.kill(station.pid, signal.SIGKILL)
            recorded_before_kill.append(event["done"])

    outcome = run_scenario(
        _scenario(40, 50), workspace=tmp_path, on_event=on_event,
        on_started=testbeds.append,
    )  # fmt: skip
    assert recorded_before_kill == [3]
    assert outcome.status == "incomplete"
    assert outcome.reason == "the base station exited with code -9"
    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
    assert len([task for task in tasks if task.device == "d1"]) >= 3
    assert len(tasks) < 80
    assert find_leftovers(testbeds[0].prefix) == []
    assert _groups(testbeds[0].prefix) == []


def _wait_for_tasks(store: Path, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                try:
                    done = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= count:
                return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} tasks recorded in {timeout_s} s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_cli_then_testbed_down_leaves_nothing(
    tmp_path: Path, sig: signal.Signals
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(_scenario(200, 50).to_yaml())
    workspace = tmp_path / "ws"
    cli = subprocess.Popen(
        [sys.executable, "-m", "splitlab.cli", "run", str(path),
         "--workspace", str(workspace)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_tasks(workspace / "results.sqlite", 5, timeout_s=240)
    finally:
        cli.send_signal(sig)
    _, stderr = cli.communicate(timeout=30)
    assert cli.returncode != 0
    prefix = f"r1p{cli.pid}"

    down = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "testbed", "down",
         "--workspace", str(workspace)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert find_leftovers(prefix) == []
    assert _groups(prefix) == []

    with ResultStore(workspace / "results.sqlite") as store:
        run = store.run(1)
        tasks = store.tasks(1)
    assert run.status == "incomplete"
    assert len(tasks) >= 5
    if sig == signal.SIGTERM:
        # The CLI tore the testbed down itself and said why.
        assert run.reason == "interrupted"
        assert "Traceback" not in stderr


def test_a_device_that_never_connects_stops_the_run_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import splitlab.station

    # A device whose process is killed before it connects.
    def on_started(testbed: LocalTestbed) -> None:
        threading.Thread(target=testbed.kill_device, args=("d2",)).start()

    monkeypatch.setenv("SPLITLAB_CONNECT_TIMEOUT_S", "8")
    assert splitlab.station.connect_timeout_s() == 8.0
    outcome = run_scenario(_scenario(5, 50), workspace=tmp_path,
                           on_started=on_started)  # fmt: skip
    assert outcome.status == "incomplete"
    assert outcome.reason == "devices d2 did not connect within 8 s"
