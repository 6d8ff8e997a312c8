"""The netns testbed: real namespaces, htb, nftables and the delay stage.

The tests that build namespaces need root and are marked ``root``; they
skip only when not run as root.  Every namespace, qdisc, nftables table,
cgroup and process a test makes is removed at its end, even when it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitlab.errors import ConfigError
from splitlab.experiment import run_scenario
from splitlab.measure import Effort, measure_loss, measure_rate_bps
from splitlab.netns import NetnsTestbed, remove_networks
from splitlab.network import (
    MAX_INTERFACE_CHARS,
    board_script,
    board_teardown_script,
    choose_octet,
    htb_rate_bps,
    interface_tag,
    plan_network,
    setup_script,
    teardown_script,
)
from splitlab.results import ResultStore
from splitlab.scenario import LinkConfig, Scenario, parse_scenario
from splitlab.testbed import LocalTestbed, find_leftovers, teardown

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _scenario(devices: list[dict[str, object]], **extra: object) -> Scenario:
    return parse_scenario(
        {
            "name": "netns-test",
            "backend": "netns",
            "model": "cnn-small",
            "devices": devices,
            **extra,
        },
        source="test",
    )


def _leftovers(prefix: str) -> list[str]:
    """Namespaces, interfaces and nftables tables of ``prefix`` still present."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    found += [line for line in netns.stdout.splitlines() if f"-{prefix}-" in line]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
    found += [
        line for line in links.stdout.splitlines() if interface_tag(prefix) in line
    ]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    found += [line for line in tables.stdout.splitlines() if prefix in line]
    return found


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A run prefix whose network and cgroups are removed after the test."""
    name = f"t{os.getpid()}{request.node.name[-12:].replace('[', '').replace(']', '')}"
    name = "".join(c for c in name if c.isalnum())
    yield name
    remove_networks(name)
    teardown(name)
    assert _leftovers(name) == []


# Pure planning: no root needed.


def test_names_are_short_and_derived_from_the_prefix() -> None:
    links = [(f"device{i}", LinkConfig(latency_ms=5, rate_mbps=10)) for i in range(300)]
    plan = plan_network(links, station="bs", prefix="r12p34567", octet=42, netem=False)
    tag = interface_tag("r12p34567")
    for node in plan.nodes:
        for name in (node.interface, node.hub_interface, node.tun or ""):
            assert len(name) <= MAX_INTERFACE_CHARS
            assert name == "" or name.startswith(tag)
        assert node.namespace.startswith("splitlab-r12p34567-")
    assert plan.station.address == "10.42.0.2"
    assert plan.devices[0].address == "10.42.0.6"
    assert plan.devices[299].address == "10.42.4.178"
    assert len({node.address for node in plan.nodes}) == 301


def test_scripts_shape_both_directions_and_remove_everything() -> None:
    link = LinkConfig(latency_ms=20, rate_mbps=10, loss_percent=2.5)
    plan = plan_network([("pi", link)], station="bs", prefix="p1", octet=9, netem=False)
    script = setup_script(plan)
    device = plan.devices[0]
    rate = f"rate {htb_rate_bps(link)}bit"
    assert script.count(rate) == 2
    assert f"dev {device.interface} parent 1: classid 1:1 htb {rate}" in script
    assert f"dev {device.hub_interface} parent 1: classid 1:1 htb {rate}" in script
    assert f"tuntap add dev {device.tun} mode tun" in script
    assert f"iif {device.hub_interface} lookup {device.table}" in script
    assert f'iifname "{device.hub_interface}"' in script
    assert f'oifname "{device.hub_interface}"' in script
    assert "mod 10000 < 250" in script
    assert "netem" not in script
    down = teardown_script(plan)
    for namespace in plan.namespaces:
        assert f"ip netns del {namespace}" in down


def test_netem_kernels_get_netem_instead_of_the_delay_stage() -> None:
    link = LinkConfig(latency_ms=20, rate_mbps=10, jitter_ms=2)
    plan = plan_network([("pi", link)], station="bs", prefix="p1", octet=9, netem=True)
    script = setup_script(plan)
    assert plan.delayed == ()
    assert script.count("netem delay 20ms 2ms distribution normal") == 2
    assert "tuntap" not in script


def test_the_chosen_subnet_avoids_used_ones() -> None:
    first = choose_octet("r1p1", set())
    assert 1 <= first <= 254
    assert choose_octet("r1p1", {first}) != first
    with pytest.raises(ConfigError, match="every 10.x"):
        choose_octet("r1p1", set(range(256)))


def test_the_local_backend_refuses_loss_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"devices\[0\]\.link\.loss_percent"):
        parse_scenario(
            {
                "name": "x",
                "devices": [
                    {"name": "a", "cpu_share": 0.5,
                     "link": {"latency_ms": 1, "rate_mbps": 1, "loss_percent": 1}},
                ],
            },
            source="x.yaml",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"load": {"cpu_percent": 10}}, r"devices\[0\]\.load"),
     ({"cpus": [4095]}, r"devices\[0\]\.cpus")],
)  # fmt: skip
def test_a_load_needs_cgroups_and_pinning_needs_real_cpus(
    extra: dict[str, object], field: str
) -> None:
    scenario = parse_scenario(
        {"name": "x", "devices": [
            {"name": "a", "cpu_share": 0.5,
             "link": {"latency_ms": 1, "rate_mbps": 1}, **extra}]},
        source="x.yaml",
    )  # fmt: skip
    testbed = LocalTestbed(scenario, prefix=f"u{os.getpid()}", prefer="sigstop")
    try:
        with pytest.raises(ConfigError, match=field):
            testbed.start_devices(port=1, secret=bytes(32))
    finally:
        testbed.close()
    assert testbed.loads == {}


# Real namespaces.


@pytest.mark.slow
@pytest.mark.root
@needs_root
def test_links_are_shaped_as_configured_both_ways(prefix: str, tmp_path: Path) -> None:
    scenario = _scenario(
        [
            {"name": "far", "cpu_share": 0.5,
             "link": {"latency_ms": 20, "rate_mbps": 10, "loss_percent": 4}},
            {"name": "near", "cpu_share": 0.5,
             "link": {"latency_ms": 5, "rate_mbps": 30}},
        ]
    )  # fmt: skip
    testbed = NetnsTestbed(scenario, prefix=prefix, run_dir=tmp_path)
    try:
        assert testbed.plan.netem or len(testbed.plan.delayed) == 2
        check = testbed.check(Effort(pings=20, transfer_s=2, probes=5000, busy_s=0.5))
    finally:
        testbed.close()
    assert _leftovers(prefix) == []
    for node in ("far", "near"):
        for quantity in ("uplink_mbps", "downlink_mbps"):
            comparison = check.get(node, quantity)
            assert abs(comparison.error) <= 0.05, comparison
        # Within 5 %, or within 0.4 ms on a short link: without netem each
        # packet passes the userspace delay stage, whose wake-up and copy
        # cost about 0.1 ms a pass on a quiet machine and more on a busy one.
        latency = check.get(node, "latency_ms")
        assert abs(latency.measured - latency.configured) <= max(
            0.05 * latency.configured, 0.4
        ), latency
    for quantity in ("uplink_loss_percent", "downlink_loss_percent"):
        comparison = check.get("far", quantity)
        assert abs(comparison.error) <= 1.0, comparison
    # The saved scripts are the ones that ran.
    assert (tmp_path / "setup.sh").read_text() == setup_script(testbed.plan)


@pytest.mark.root
@needs_root
def test_a_device_gets_its_cpu_share_and_load_slows_it(
    prefix: str, tmp_path: Path
) -> None:
    scenario = _scenario(
        [
            {"name": "pi", "cpu_share": 0.1,
             "load": {"cpu_percent": 100},
             "link": {"latency_ms": 0, "rate_mbps": 100}},
        ]
    )  # fmt: skip
    testbed = NetnsTestbed(scenario, prefix=prefix, run_dir=tmp_path)
    try:
        alone = testbed.measure_cpu("pi", busy_s=2)
        loaded = testbed.measure_cpu("pi", busy_s=2, loaded=True)
    finally:
        testbed.close()
    # A small share, which the loop gets even when other work keeps the
    # machine's cores busy; and a tenth rather than the check's 5 %.
    assert alone == pytest.approx(0.1, rel=0.10)
    # Load and loop share the device's 0.1: the loop gets about half.
    assert loaded < 0.75 * alone


@pytest.mark.slow
@pytest.mark.root
@needs_root
def test_a_run_on_netns_verifies_every_task(tmp_path: Path) -> None:
    scenario = _scenario(
        [
            {"name": "d1", "cpu_share": 0.5,
             "link": {"latency_ms": 10, "rate_mbps": 20, "loss_percent": 1}},
            {"name": "d2", "cpu_share": 0.4, "load": {"cpu_percent": 30},
             "link": {"latency_ms": 25, "rate_mbps": 10, "jitter_ms": 1}},
        ],
        algorithm="offload-all",
        workload={"tasks_per_device": 3, "period_ms": 200},
        profiling={"warmup": 1, "repeats": 3},
        training={"epochs": 1},
    )  # fmt: skip
    outcome = run_scenario(scenario, workspace=tmp_path)
    prefix = f"r{outcome.run_id}p{os.getpid()}"
    try:
        assert outcome.status == "completed", outcome.reason
        with ResultStore(outcome.store) as store:
            tasks = store.tasks(outcome.run_id)
            events = store.events(outcome.run_id)
        assert len(tasks) == 6
        assert all(task.matches_unsplit for task in tasks)
        # Offloaded over a 25 ms, 10 Mbit/s link: the latency and the input's
        # 10 ms on the wire, once; shaped in the transport as well, it would
        # be twice that.
        on_link = sorted(t.transmission_s for t in tasks if t.device == "d2")
        assert on_link[0] >= 0.025
        assert on_link[1] < 0.060
        scripts = [detail for _, _, kind, detail in events if kind == "script"]
        assert any(path.endswith("setup.sh") for path in scripts)
        assert outcome.check is not None
        assert outcome.check.get("d1", "uplink_mbps").within
    finally:
        remove_networks(prefix)
    assert _leftovers(prefix) == []


@pytest.mark.slow
@pytest.mark.root
@needs_root
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_stopped_run_leaves_nothing_after_testbed_down(
    tmp_path: Path, stop: signal.Signals
) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "name: killed\nbackend: local\nmodel: cnn-small\n"
        "workload: {tasks_per_device: 200, period_ms: 100}\n"
        "training: {epochs: 1}\n"
        "devices:\n"
        "  - {name: d1, cpu_share: 0.3, load: {cpu_percent: 50},\n"
        "     link: {latency_ms: 10, rate_mbps: 10}}\n"
    )
    command = [sys.executable, "-m", "splitlab.cli", "run", str(scenario),
               "--backend", "netns", "--workspace", str(tmp_path / "ws")]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=os.environ.copy())
    prefix = None
    try:
        deadline = time.monotonic() + 240
        while prefix is None and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before it was stopped"
            names = subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True
            ).stdout.split()
            mine = [n for n in names if n.startswith("splitlab-r")
                    and n.split("-")[1].endswith(f"p{run.pid}")]  # fmt: skip
            if any(n.endswith("-dev-d1") for n in mine):
                prefix = mine[0].split("-")[1]
            time.sleep(0.5)
        assert prefix is not None, "the run built no namespaces"
        # Into the task phase: the agent, its load and the delay stage run.
        time.sleep(8)
        assert find_leftovers(prefix) != []
    finally:
        run.send_signal(stop)
        run.wait(timeout=60)
    try:
        if stop == signal.SIGTERM:
            # The CLI tore its testbed down itself.
            assert run.returncode != 0
            assert _leftovers(prefix) == []
            assert find_leftovers(prefix) == []
        else:
            assert _leftovers(prefix) != []
        down = subprocess.run(
            [sys.executable, "-m", "splitlab.cli", "testbed", "down",
             "--prefix", prefix, "--workspace", str(tmp_path / "ws")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        if stop == signal.SIGKILL:
            assert "removed namespace" in down.stdout
    finally:
        remove_networks(prefix)
        teardown(prefix)
    assert _leftovers(prefix) == []
    assert find_leftovers(prefix) == []


@pytest.mark.slow
@pytest.mark.root
@needs_root
def test_a_board_script_shapes_its_own_interface_both_ways(
    prefix: str, tmp_path: Path
) -> None:
    # The base station's end is unshaped, so it stands in for a board's
    # interface: egress by htb, ingress through an IFB device.
    scenario = _scenario(
        [{"name": "pi", "cpu_share": 0.5, "link": {"latency_ms": 0, "rate_mbps": 1000}}]
    )
    link = LinkConfig(latency_ms=0, rate_mbps=8, loss_percent=3)
    testbed = NetnsTestbed(scenario, prefix=prefix, run_dir=tmp_path)
    try:
        station, device = testbed.plan.station, testbed.plan.devices[0]
        script = tmp_path / "board.sh"
        script.write_text(
            board_script(station.interface, link, prefix=prefix, netem=False)
        )
        exec_in = ["ip", "netns", "exec", station.namespace, "bash"]
        subprocess.run([*exec_in, str(script)], check=True, capture_output=True)
        up_bps = measure_rate_bps(
            device.namespace, station.namespace, station.address,
            size_bytes=2_000_000, timeout_s=30,
        )  # fmt: skip
        down_bps = measure_rate_bps(
            station.namespace, device.namespace, device.address,
            size_bytes=2_000_000, timeout_s=30,
        )  # fmt: skip
        lost_up = measure_loss(
            device.namespace, station.namespace, station.address,
            probes=4000, rate_bps=8e6, latency_s=0,
        )  # fmt: skip
        undo = tmp_path / "board-down.sh"
        undo.write_text(board_teardown_script(station.interface, prefix=prefix))
        subprocess.run([*exec_in, str(undo)], check=True, capture_output=True)
        qdiscs = subprocess.run(
            ["tc", "-n", station.namespace, "qdisc", "show"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        testbed.close()
    assert up_bps / 8e6 == pytest.approx(1, abs=0.05)
    assert down_bps / 8e6 == pytest.approx(1, abs=0.05)
    assert lost_up * 100 == pytest.approx(3, abs=1)
    assert "htb" not in qdiscs
    assert "ingress" not in qdiscs
