"""Monitoring with real processes, sockets and SQLite."""

from __future__ import annotations

import itertools
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from splitlab.monitor import (
    Monitor,
    PingRtt,
    Target,
    TcpConnectRtt,
    process_tree,
    store_sink,
    summarise_usage,
    tree_usage,
)
from splitlab.results import ResultStore, UsageSample
from splitlab.scenario import parse_scenario

# A parent that, told to go, starts a child; each burns a fixed amount of its
# own CPU time, then both sleep.  The parent also holds 64 MiB it has written
# to.
_BURNER = """
import subprocess, sys, time
def burn(cpu_s):
    start = time.process_time()
    while time.process_time() - start < cpu_s:
        pass
if sys.argv[1] == "parent":
    block = bytearray(64 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    print("ready", flush=True)
    sys.stdin.readline()
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", ""])
    burn(0.4)
    child.wait()
    time.sleep(60)
else:
    burn(0.3)
"""


@pytest.fixture
def burner() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", _BURNER, "parent", _BURNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    yield process
    for pid in reversed(process_tree(process.pid)):
        subprocess.run(["kill", "-9", str(pid)], check=False)
    process.wait()


def _go(burner: subprocess.Popen[str]) -> None:
    assert burner.stdin is not None
    burner.stdin.write("go\n")
    burner.stdin.flush()


def _wait_for_cpu(pid: int, cpu_s: float, timeout_s: float = 30.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        usage = tree_usage(pid)
        assert usage is not None
        if usage[0] >= cpu_s:
            return usage[0]
        time.sleep(0.05)
    raise AssertionError(f"the burner did not reach {cpu_s} s of CPU")


def _settled_cpu(pid: int) -> float:
    """The tree's CPU time once both processes have burnt theirs and sleep."""
    _wait_for_cpu(pid, 0.7)
    while True:
        before = tree_usage(pid)
        time.sleep(0.3)
        after = tree_usage(pid)
        assert before is not None and after is not None
        if after[0] - before[0] < 0.02:
            return after[0]


def test_tree_usage_counts_the_children_and_the_memory(
    burner: subprocess.Popen[str],
) -> None:
    assert len(process_tree(burner.pid)) >= 1
    _go(burner)
    before = tree_usage(burner.pid)
    assert before is not None
    assert before[1] >= 64 * 2**20
    # Parent 0.4 s plus child 0.3 s, and the interpreters' own start-up.
    settled = _settled_cpu(burner.pid)
    assert 0.7 <= settled < 0.7 + 1.0
    assert tree_usage(2**22 + 12345) is None


def test_monitor_samples_add_up_to_the_cpu_burnt(
    burner: subprocess.Popen[str], tmp_path: Path
) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    run_id = store.create_run(name="m", scenario_yaml="", scenario_hash="",
                              seed=1, algorithm="a", scheduler="s",
                              environment={})  # fmt: skip
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        start = tree_usage(burner.pid)
        assert start is not None
        monitor = Monitor(
            [Target("dev", burner.pid, TcpConnectRtt("127.0.0.1", port))],
            interval_s=0.1,
            sink=store_sink(store, run_id),
        )
        with monitor:
            # The burning starts once the monitor has its first sample, so
            # every CPU second falls between two samples.
            deadline = time.monotonic() + 30
            while not store.samples(run_id):
                assert time.monotonic() < deadline, "no sample in 30 s"
                time.sleep(0.02)
            _go(burner)
            end_cpu = _settled_cpu(burner.pid)
    samples = store.samples(run_id)
    store.close()

    assert len(samples) >= 5
    assert all(s.node == "dev" for s in samples)
    times = [s.at for s in samples]
    assert times == sorted(times)
    # Each fraction times its interval, summed, is the CPU time used while
    # the monitor ran.
    intervals = [b - a for a, b in itertools.pairwise(times)]
    burnt = sum(
        s.cpu_fraction * dt
        for s, dt in zip(samples[1:], intervals, strict=True)
        if s.cpu_fraction is not None
    )
    assert burnt == pytest.approx(end_cpu - start[0], abs=0.12)
    assert all(s.rss_bytes >= 64 * 2**20 for s in samples)
    assert all(s.rtt_s is not None and 0 < s.rtt_s < 0.5 for s in samples)

    usage = summarise_usage(samples)
    assert [u.node for u in usage] == ["dev"]
    assert usage[0].samples == len(samples)
    assert usage[0].rss_peak_bytes == max(s.rss_bytes for s in samples)
    assert usage[0].cpu_peak >= usage[0].cpu_mean > 0


def test_rtt_probes_answer_or_say_none() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        rtt = TcpConnectRtt("127.0.0.1", port)()
        assert rtt is not None and 0 < rtt < 0.5
    # Nothing listens there any more.
    assert TcpConnectRtt("127.0.0.1", port, timeout_s=0.5)() is None
    ping = PingRtt("127.0.0.1")()
    assert ping is not None and 0 < ping < 0.5
    assert PingRtt("127.0.0.1", prefix=("false",))() is None


def test_a_dead_target_is_skipped_and_the_sink_error_is_survived() -> None:
    calls: list[int] = []

    def failing(samples: object) -> None:
        calls.append(1)
        raise RuntimeError("disk full")

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    monitor = Monitor([Target("gone", process.pid)], interval_s=0.05, sink=failing)
    assert monitor.sample() == []
    with monitor:
        time.sleep(0.3)
    assert len(calls) >= 2


def test_summary_of_hand_samples() -> None:
    rows = [
        UsageSample("a", 1.0, None, 100, 0.004),
        UsageSample("a", 2.0, 0.5, 300, None),
        UsageSample("a", 3.0, 0.25, 200, 0.002),
        UsageSample("b", 1.0, None, 50, None),
    ]
    a, b = summarise_usage(rows)
    assert (a.node, a.samples, a.cpu_mean, a.cpu_peak) == ("a", 3, 0.375, 0.5)
    assert (a.rss_peak_bytes, a.rtt_median_s) == (300, 0.003)
    assert b.node == "b" and math.isnan(b.cpu_mean) and math.isnan(b.rtt_median_s)


def test_monitoring_can_be_switched_off_and_round_trips() -> None:
    base = {
        "name": "m",
        "devices": [
            {"name": "d", "cpu_share": 0.5, "link": {"latency_ms": 1, "rate_mbps": 1}}
        ],
    }
    assert parse_scenario(base, source="t").monitoring.interval_s == 1.0
    off = parse_scenario({**base, "monitoring": False}, source="t")
    assert not off.monitoring.enabled
    again = parse_scenario(yaml.safe_load(off.to_yaml()), source="t")
    assert not again.monitoring.enabled
    fast = parse_scenario({**base, "monitoring": {"interval_s": 0.2}}, source="t")
    assert fast.monitoring.enabled and fast.monitoring.interval_s == 0.2


@pytest.mark.slow
def test_a_local_run_records_every_nodes_usage(tmp_path: Path) -> None:
    from splitlab import calibration
    from splitlab.experiment import run_scenario
    from splitlab.export import export_runs, read_export
    from splitlab.report import summarise

    scenario = parse_scenario(
        {
            "name": "watched",
            "model": "alexnet-small",
            "training": {"epochs": 1},
            "workload": {"tasks_per_device": 6, "period_ms": 200},
            "profiling": {"warmup": 1, "repeats": 3},
            "monitoring": {"interval_s": 0.25},
            "devices": [
                {"name": "pi", "class": "rpi4",
                 "link": {"latency_ms": 5, "rate_mbps": 20}},
                {"name": "fast", "cpu_share": 0.5,
                 "link": {"latency_ms": 5, "rate_mbps": 20}},
            ],
        },
        source="test",
    )  # fmt: skip
    events: list[dict[str, object]] = []
    outcome = run_scenario(scenario, workspace=tmp_path, on_event=events.append)
    assert outcome.status == "completed", outcome.reason
    assert not [e for e in events if e["event"] == "refused"]

    with ResultStore(outcome.store) as store:
        samples = store.samples(outcome.run_id)
        nodes = {node.node: node for node in store.nodes(outcome.run_id)}
        environment = store.run(outcome.run_id).environment
        summary = summarise(store, outcome.run_id)
        export_runs(store, [outcome.run_id], tmp_path / "out", fmt="csv")

    # The class's share is this machine's calibration, and the run says so.
    share = calibration.current().share("rpi4")
    assert environment["calibration"]["shares"]["rpi4"] == pytest.approx(share)
    assert nodes["pi"].cpu_share == pytest.approx(share, rel=0.05)

    usage = {row.node: row for row in summary.usage}
    assert set(usage) == {"bs", "pi", "fast"}
    for name in ("pi", "fast"):
        row = usage[name]
        assert row.samples >= 4
        assert 0 < row.rtt_median_s < 0.5
        assert row.rss_peak_bytes > 20 * 2**20
        # A device is held to its share; sampling noise aside, it stays there.
        assert 0 < row.cpu_mean <= (nodes[name].cpu_share or 0) * 1.3 + 0.05
    assert math.isnan(usage["bs"].rtt_median_s)
    assert {s.node for s in samples} == {"bs", "pi", "fast"}
    assert set(summary.energy_per_task_j) == {"pi"}
    assert summary.energy_per_task_j["pi"] > 0

    back = read_export(tmp_path / "out", fmt="csv")
    assert len(back["samples"]) == len(samples)
    assert len(back["energy"]) == 6
