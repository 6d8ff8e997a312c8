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

from splitlab.errors import ConfigError
from splitlab.experiment import run_scenario
from splitlab.limit import detect_capabilities
from splitlab.results import ResultStore
from splitlab.scenario import DeviceConfig, Scenario, parse_scenario
from splitlab.testbed import DeviceProcess, LocalTestbed, find_leftovers

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
    # With the station gone, the testbed verified what it had recorded.
    assert all(task.matches_unsplit for task in tasks)
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

    # A device that freezes once ready, before it is let go to connect.
    release = LocalTestbed._hold_and_release

    def freeze_d2(
        testbed: LocalTestbed,
        index: int,
        config: DeviceConfig,
        process: subprocess.Popen[bytes],
    ) -> DeviceProcess:
        if config.name == "d2":
            os.kill(process.pid, signal.SIGSTOP)
        return release(testbed, index, config, process)

    monkeypatch.setattr(LocalTestbed, "_hold_and_release", freeze_d2)
    monkeypatch.setenv("SPLITLAB_CONNECT_TIMEOUT_S", "8")
    assert splitlab.station.connect_timeout_s() == 8.0
    outcome = run_scenario(_scenario(5, 50), workspace=tmp_path)
    assert outcome.status == "incomplete"
    assert outcome.reason == "devices d2 did not connect within 8 s"


def test_a_hung_device_is_declared_and_the_others_finish(tmp_path: Path) -> None:
    testbeds: list[LocalTestbed] = []
    stopped: list[int] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "task" and event["node"] == "d2" and event["done"] == 2:
            process = testbeds[0].devices["d2"].process
            # SIGSTOP a process the limiter may also cycle: release it first.
            testbeds[0].limiter.release(process.pid)
            os.kill(process.pid, signal.SIGSTOP)
            stopped.append(process.pid)

    outcome = run_scenario(
        _scenario(12, 50), workspace=tmp_path, on_event=on_event,
        on_started=testbeds.append,
    )  # fmt: skip
    assert stopped
    assert outcome.status == "incomplete"
    assert outcome.reason is not None
    assert outcome.reason.startswith("d2: hung: silent for 1")
    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
    assert len([task for task in tasks if task.device == "d1"]) == 12
    assert 2 <= len([task for task in tasks if task.device == "d2"]) < 12
    assert find_leftovers(testbeds[0].prefix) == []


def test_an_unauthenticated_client_is_refused_while_the_run_goes_on(
    tmp_path: Path,
) -> None:
    import socket

    from splitlab.wire import Channel

    port: list[int] = []
    outcomes: list[str] = []

    def intrude() -> None:
        # A client that knows the protocol but not the run's secret, then one
        # that sends garbage; both during the run.
        try:
            Channel.connect("127.0.0.1", port[0], secret=b"x" * 32, node="d1",
                            timeout_s=5)  # fmt: skip
        except Exception as error:
            outcomes.append(type(error).__name__)
        with socket.create_connection(("127.0.0.1", port[0]), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
            outcomes.append("garbage sent")

    events: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "listening":
            port.append(int(event["port"]))
        if event["event"] == "task" and event["node"] == "d1" and event["done"] == 2:
            threading.Thread(target=intrude).start()

    outcome = run_scenario(_scenario(10, 60), workspace=tmp_path, on_event=on_event)
    assert outcome.status == "completed", outcome.reason
    assert outcomes == ["ProtocolError", "garbage sent"]
    refused = [event for event in events if event["event"] == "refused"]
    assert len(refused) == 2
    with ResultStore(outcome.store) as store:
        assert len(store.tasks(outcome.run_id)) == 20


def test_a_cut_link_reconnects_and_no_task_is_lost_or_doubled(tmp_path: Path) -> None:
    testbeds: list[LocalTestbed] = []
    events: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        if (
            event["event"] == "task"
            and event["node"] == "d2"
            and event["done"]
            in (
                3,
                7,
            )
        ):
            testbeds[0].cut_link("d2")

    outcome = run_scenario(
        _scenario(12, 60), workspace=tmp_path, on_event=on_event,
        on_started=testbeds.append,
    )  # fmt: skip
    assert outcome.status == "completed", outcome.reason
    kinds = [event["event"] for event in events]
    assert kinds.count("disconnected") == 2
    assert kinds.count("reconnected") == 2
    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
    assert sorted(task.task_id for task in tasks) == list(range(24))
    assert all(task.matches_unsplit for task in tasks)


def test_an_interrupted_run_resumes_and_ends_complete(tmp_path: Path) -> None:
    testbeds: list[LocalTestbed] = []

    def kill_station(event: dict[str, Any]) -> None:
        if event["event"] == "task" and event["node"] == "d2" and event["done"] == 4:
            station = testbeds[0].station
            assert station is not None
            os.kill(station.pid, signal.SIGKILL)

    scenario = _scenario(15, 50)
    first = run_scenario(scenario, workspace=tmp_path, on_event=kill_station,
                         on_started=testbeds.append)  # fmt: skip
    assert first.status == "incomplete"
    with ResultStore(first.store) as store:
        before = {task.task_id for task in store.tasks(first.run_id)}
    assert 4 <= len(before) < 30

    from splitlab.experiment import resumable

    resumed = resumable(tmp_path, first.run_id)
    assert resumed == scenario
    second = run_scenario(resumed, workspace=tmp_path, resume=first.run_id)
    assert second.run_id == first.run_id
    assert second.status == "completed", second.reason
    with ResultStore(second.store) as store:
        tasks = store.tasks(first.run_id)
        assert store.runs()[-1].run_id == first.run_id  # no new run was made
    assert sorted(task.task_id for task in tasks) == list(range(30))
    assert before <= {task.task_id for task in tasks}
    assert all(task.matches_unsplit for task in tasks)

    with pytest.raises(ConfigError, match=f"run {first.run_id} is already complete"):
        resumable(tmp_path, first.run_id)


def test_a_slowed_device_triggers_a_replan_with_its_cause(tmp_path: Path) -> None:
    scenario = parse_scenario(
        {
            "name": "replan",
            "seed": 3,
            "model": "cnn-deep",
            "training": {"epochs": 1},
            "workload": {"tasks_per_device": 24, "period_ms": 120},
            "profiling": {"warmup": 2, "repeats": 5},
            "algorithm": "greedy",
            "replan": {"threshold": 0.5, "window": 3},
            "devices": [
                {"name": "d1", "cpu_share": 0.5,
                 "link": {"latency_ms": 10, "rate_mbps": 100}},
                {"name": "d2", "cpu_share": 0.5,
                 "link": {"latency_ms": 40, "rate_mbps": 10}},
            ],
        },
        source="test",
    )  # fmt: skip
    testbeds: list[LocalTestbed] = []
    events: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "task" and event["node"] == "d1" and event["done"] == 4:
            # A background load arrives: d1 now gets a twentieth of a core.
            testbeds[0].set_cpu_share("d1", 0.05)

    outcome = run_scenario(scenario, workspace=tmp_path, on_event=on_event,
                           on_started=testbeds.append)  # fmt: skip
    assert outcome.status == "completed", outcome.reason
    plan = next(event for event in events if event["event"] == "plan")
    replans = [event for event in events if event["event"] == "replan"]
    assert plan["cuts"]["d1"] > 0, "d1 should start with some stages at home"
    # A quota's bursts can trip an early re-plan that keeps the cut; the one
    # that follows the slow-down moves d1's cut towards the BS.
    moved = [
        event
        for event in replans
        if event["cause"].startswith("d1: device compute at ")
        and event["after"]["d1"] < event["before"]["d1"]
    ]
    assert moved, f"no re-plan moved d1's cut: {replans}"
    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
        logged = [kind for _, _, kind, _ in store.events(outcome.run_id)]
    assert "replan" in logged
    assert len(tasks) == 48
    assert all(task.matches_unsplit for task in tasks)
    assert len({task.cut for task in tasks if task.device == "d1"}) >= 2
