"""The doctor's probes against what this machine really has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from splitlab.cli import main
from splitlab.doctor import MachineReport, examine
from splitlab.limit import detect_capabilities


@pytest.fixture(scope="module")
def report() -> MachineReport:
    return examine()


def _mounted(kind: str, controller: str | None = None) -> bool:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == kind and (
            controller is None or controller in fields[3].split(",")
        ):
            return True
    return False


def test_tools_match_the_path(report: MachineReport) -> None:
    for name, executable in (
        ("stress-ng", "stress-ng"),
        ("cpulimit", "cpulimit"),
        ("ping", "ping"),
        ("sshd", "sshd"),
        ("chromium", "chromium"),
    ):
        assert report.ok(name) == (shutil.which(executable) is not None), name
    assert report.ok("root") == (os.geteuid() == 0)
    assert report.ok("/dev/net/tun") == Path("/dev/net/tun").exists()
    assert os.uname().release in report.probe("kernel").detail


def test_cgroup_probes_match_the_hierarchies(report: MachineReport) -> None:
    for controller in ("cpu", "memory", "cpuset"):
        assert report.ok(f"cgroup v1 {controller}") == _mounted("cgroup", controller)
    capabilities = detect_capabilities()
    for controller in ("cpu", "memory"):
        offered = controller in capabilities.cgroup_v2_controllers
        assert report.ok(f"cgroup v2 {controller}") == offered


@pytest.mark.root
def test_netem_probe_agrees_with_tc_in_a_namespace(report: MachineReport) -> None:
    name = f"sltest-doctor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        netem = subprocess.run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root",
             "netem", "delay", "2ms"],
            capture_output=True, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)
    assert report.ok("tc netem") == (netem.returncode == 0)
    assert report.ok("network namespaces")
    assert report.ok("veth")


@pytest.mark.root
def test_probes_leave_nothing_behind(report: MachineReport) -> None:
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "splitlab-doctor" not in namespaces
    for root in Path("/sys/fs/cgroup").iterdir():
        assert not list(root.glob("splitlab-doctor-*")), root
    # The scratch cgroup did take a period, so the probe is not vacuous.
    cpu = detect_capabilities().cgroup_v1_cpu_path
    if cpu is not None:
        assert report.ok("cfs period settable")


def test_backend_plans_follow_the_probes(report: MachineReport) -> None:
    plans = {plan.backend: plan for plan in report.backends}
    assert set(plans) == {"local", "netns", "ssh"}
    assert plans["local"].usable
    netns = " ".join(plans["netns"].uses)
    if report.ok("tc netem"):
        assert "delay by tc netem" in netns
    else:
        assert "delay by userspace forwarder (no netem)" in netns
    best = detect_capabilities().available()[0]
    expected = {
        "cgroup-v2": "cgroup v2 cpu.max",
        "cgroup-v1": "cgroup v1 cfs quota",
        "cpulimit": "cpulimit",
        "sigstop": "SIGSTOP",
    }[best]
    assert expected in plans["local"].uses[0]
    assert plans["ssh"].usable == report.ok("asyncssh")


def test_cli_json_lists_every_probe() -> None:
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    names = {probe["name"] for probe in data["probes"]}
    assert {"tc netem", "IFB", "nftables", "cgroup v1 cpu", "asyncssh"} <= names
    assert [b["backend"] for b in data["backends"]] == ["local", "netns", "ssh"]
