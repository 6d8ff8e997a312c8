"""The ssh backend against real OpenSSH servers standing in for boards.

Each "board" is a network namespace joined to this one by a veth pair on a
private /30, with Debian's ``sshd`` listening only on the namespace's
address.  The boards share this machine's filesystem and processes, so the
tests can see what the backend left behind.  ``sshd`` is started with
``nsenter --net`` rather than ``ip netns exec``, because the latter remounts
``/sys`` and so hides the cgroup hierarchies a real board has.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from splitlab import boards as boards_module
from splitlab.boards import (
    SshTestbed,
    _replies,
    board_scripts,
    cfs_quota,
    limit_script,
    link_script,
    tbf_burst_bytes,
)
from splitlab.errors import ConfigError, TestbedError
from splitlab.experiment import prepare_weights, run_scenario
from splitlab.results import ResultStore
from splitlab.scenario import Scenario, parse_scenario
from splitlab.testbed import find_leftovers

COMMAND_TIMEOUT_S = 20
SSHD_START_S = 10.0


@dataclass(frozen=True)
class Board:
    """One namespace with an sshd."""

    namespace: str
    address: str  # inside the namespace, where sshd listens
    peer: str  # this side of the veth pair
    host_key: Path
    process: subprocess.Popen[bytes]


@dataclass(frozen=True)
class Boards:
    """The boards and the client's files."""

    boards: tuple[Board, ...]
    client_key: Path
    known_hosts: Path
    folder: Path


def _run(*command: str) -> str:
    return subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    ).stdout


def _free_subnet() -> ipaddress.IPv4Network:
    used = [
        ipaddress.ip_network(word, strict=False)
        for word in _run("ip", "-4", "-o", "addr", "show").split()
        if "/" in word and word[0].isdigit()
    ]
    used += [
        ipaddress.ip_network(line.split()[0])
        for line in _run("ip", "-4", "route", "show").splitlines()
        if line and line[0].isdigit()
    ]
    chooser = random.Random(os.getpid())
    for _ in range(200):
        subnet = ipaddress.ip_network(
            f"10.{chooser.randrange(64, 250)}.{chooser.randrange(256)}.0/29"
        )
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError("no free private subnet for the test boards")


def _sshd_config(folder: Path, board: int, address: str, host_key: Path) -> Path:
    config = folder / f"sshd-{board}.conf"
    config.write_text(
        f"ListenAddress {address}\n"
        "Port 22\n"
        f"HostKey {host_key}\n"
        f"PidFile {folder}/sshd-{board}.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel ERROR\n"
    )
    return config


def _wait_listening(address: str) -> None:
    deadline = time.monotonic() + SSHD_START_S
    while True:
        try:
            with socket.create_connection((address, 22), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boards]:
    """Two namespaces with an sshd each, removed afterwards whatever happens."""
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.fail("the ssh backend tests need root and /usr/sbin/sshd")
    folder = tmp_path_factory.mktemp("boards")
    folder.chmod(0o755)
    tag = f"{os.getpid() % 100_000}"
    subnet = _free_subnet()
    hosts = list(subnet.hosts())
    client_key = folder / "client"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key))
    (folder / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())

    made: list[Board] = []
    namespaces: list[str] = []
    try:
        for index in range(2):
            namespace = f"slb{tag}n{index}"
            outside, inside = f"slb{tag}h{index}", f"slb{tag}b{index}"
            peer, address = str(hosts[4 * index - 0]), str(hosts[4 * index + 1])
            _run("ip", "netns", "add", namespace)
            namespaces.append(namespace)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", namespace)
            _run("ip", "addr", "add", f"{peer}/30", "dev", outside)
            _run("ip", "link", "set", outside, "up")
            inner = ("ip", "netns", "exec", namespace, "ip")
            _run(*inner, "addr", "add", f"{address}/30", "dev", inside)
            _run(*inner, "link", "set", inside, "up")
            _run(*inner, "link", "set", "lo", "up")
            # Every board reaches this machine's addresses, as on a LAN.
            _run(*inner, "route", "add", "default", "via", peer)

            host_key = folder / f"host-{index}"
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
            config = _sshd_config(folder, index, address, host_key)
            # A private /run gives sshd its privilege separation directory
            # without touching this machine's.
            process = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{namespace}", "--",
                 "unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c",
                 "mount -t tmpfs splitlab-run /run && mkdir -m 755 /run/sshd && "
                 f"exec /usr/sbin/sshd -D -e -f {config}"],
                stderr=(folder / f"sshd-{index}.log").open("wb"),
            )  # fmt: skip
            made.append(Board(namespace, address, peer, host_key, process))
            _wait_listening(address)

        known_hosts = folder / "known_hosts"
        known_hosts.write_text(
            "".join(
                f"{board.address} {board.host_key.with_suffix('.pub').read_text()}"
                for board in made
            )
        )
        yield Boards(tuple(made), client_key, known_hosts, folder)
    finally:
        for board in made:
            board.process.terminate()
            try:
                board.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                board.process.kill()
                board.process.wait()
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "del", namespace], timeout=COMMAND_TIMEOUT_S)


def _scenario(
    boards: Boards,
    *,
    first: dict[str, Any] | None = None,
    first_ssh: dict[str, Any] | None = None,
    **changes: Any,
) -> Scenario:
    """Two devices, one a board; ``first`` and ``first_ssh`` change the first."""
    devices = []
    for index, board in enumerate(boards.boards):
        device: dict[str, Any] = {
            "name": f"d{index + 1}",
            "class": "rpi4",
            "link": {"latency_ms": 5, "rate_mbps": 20},
            "ssh": {
                "host": board.address,
                "user": "root",
                "key": str(boards.client_key),
                "known_hosts": str(boards.known_hosts),
                "python": sys.executable,
                "workdir": str(boards.folder / f"work-{index}"),
            },
        }
        if index == 0:
            device.update(first or {})
            device["ssh"].update(first_ssh or {})
        devices.append(device)
    data: dict[str, Any] = {
        "name": "boards",
        "seed": 3,
        "backend": "ssh",
        "model": "cnn-small",
        "training": {"epochs": 1},
        "workload": {"tasks_per_device": 4, "period_ms": 50},
        "profiling": {"warmup": 1, "repeats": 3},
        "algorithm": "greedy",
        "devices": devices,
    }
    data.update(changes)
    return parse_scenario(data, source="test")


def _device(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "pi",
        "cpu_share": 0.05,
        "memory_mb": 256,
        "link": {"latency_ms": 20, "rate_mbps": 5, "jitter_ms": 2},
        "ssh": {"host": "pi.lan", "user": "pi", "key": "/k"},
    }
    data.update(changes)
    return parse_scenario(
        {"name": "s", "backend": "ssh", "devices": [data]}, source="test"
    ).devices[0]


def test_a_small_share_stretches_the_period_to_keep_a_1_ms_quota() -> None:
    assert cfs_quota(0.25) == (2500, 10_000)
    assert cfs_quota(0.05) == (1000, 20_000)
    assert cfs_quota(2.0) == (20_000, 10_000)


@pytest.mark.parametrize("station", ["192.168.7.1", "fd00::1"])
def test_every_board_script_is_valid_bash(station: str, tmp_path: Path) -> None:
    scripts = board_scripts(
        _device(load={"cpu_percent": 30}),
        prefix="r1p2", run_dir="/home/pi/.splitlab/r1p2", station=station,
        port=5000, python="python3", sudo="sudo -n ",
    )  # fmt: skip
    for name, text in scripts.named("pi").items():
        path = tmp_path / name
        path.write_text(text)
        checked = subprocess.run(["bash", "-n", str(path)], capture_output=True)
        assert checked.returncode == 0, (name, checked.stderr)
    assert "quota_us=1000\nperiod_us=20000\n" in scripts.limit
    assert f"memory_bytes={256 * 2**20}" in scripts.limit
    assert 'stress-ng --cpu "$2" --cpu-load "$3"' in scripts.limit
    assert "load_percent=30" in scripts.limit
    assert "rate_bit=5000000" in scripts.link
    assert "latency_us=20000" in scripts.link
    assert "jitter_us=2000" in scripts.link
    match = "ip6" if ":" in station else "ip"
    assert f'match {match} dport "$port" 0xffff' in scripts.link
    assert "sudo -n bash /home/pi/.splitlab/r1p2/limit-pi.sh up $$" in scripts.start


@pytest.mark.root
def test_without_cgroup_rights_the_limit_falls_back_to_cpulimit() -> None:
    # As user nobody the cgroup hierarchies are read-only: what a board
    # without root or sudo offers.
    if shutil.which("cpulimit") is None or shutil.which("setpriv") is None:
        pytest.fail("this test needs cpulimit and setpriv")
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o777)
        _limit_as_nobody(Path(folder))


def _limit_as_nobody(tmp_path: Path) -> None:
    script = tmp_path / "limit-pi.sh"
    script.write_text(
        limit_script(
            prefix=f"cl{os.getpid()}", device="pi", run_dir=str(tmp_path),
            cpu_share=0.3, memory_bytes=None,
        )
    )  # fmt: skip
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    worker = subprocess.Popen([*nobody, "sleep", "30"])
    try:
        reply = _run(*nobody, "bash", str(script), "apply", str(worker.pid))
        assert "mechanism=cpulimit" in reply.splitlines()
        limiter = int((tmp_path / "limit-pi.cpulimit").read_text())
        # The limiter's shell becomes env, then cpulimit, a moment later.
        deadline = time.monotonic() + 5
        while not _command(limiter).startswith(b"cpulimit"):
            assert time.monotonic() < deadline, _command(limiter)
            time.sleep(0.05)
        assert b"-l\x0030\x00" in _command(limiter)
        _run(*nobody, "bash", str(script), "down")
        deadline = time.monotonic() + 5
        while _command(limiter):
            assert time.monotonic() < deadline, "cpulimit outlived the limit"
            time.sleep(0.1)
    finally:
        worker.kill()
        worker.wait()


def test_a_board_of_a_class_is_not_limited() -> None:
    device = _device(cpu_share=None, memory_mb=None, **{"class": "rpi4"})
    script = limit_script(
        prefix="r1", device=device.name, run_dir="/r", cpu_share=device.cpu_share,
        memory_bytes=None,
    )  # fmt: skip
    assert "quota_us=\n" in script
    assert "memory_bytes=\n" in script


def test_a_board_reply_is_read_as_known_words_and_numbers_only() -> None:
    reply = (
        "pid=42; rm -rf /\nmechanism=cgroup-v1\nmechanism2=none\n"
        "delay=$(reboot)\nmemory_bytes=536870912\nrate=tc\n"
    )
    allowed = {"pid": None, "mechanism": ("cgroup-v2", "cgroup-v1", "none"),
               "memory_bytes": None, "delay": ("netem",), "rate": ("tc",)}  # fmt: skip
    assert _replies(reply, allowed) == {
        "mechanism": "cgroup-v1",
        "memory_bytes": "536870912",
        "rate": "tc",
    }


def test_link_script_names_the_station_port_only() -> None:
    device = _device()
    text = link_script(
        prefix="r1", device="pi", link=device.link, station="10.0.0.1", port=6000
    )
    assert "station=10.0.0.1\nport=6000\n" in text
    assert 'match ip dst "$station/32"' in text
    assert 'match ip src "$station/32"' in text


def _cgroups(prefix: str) -> list[Path]:
    found: list[Path] = []
    for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/memory")):
        if root.is_dir():
            found.extend(root.rglob(f"splitlab-{prefix}-*"))
    return found


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _qdiscs(namespace: str) -> str:
    return _run("ip", "netns", "exec", namespace, "tc", "qdisc", "show")


@pytest.mark.root
def test_a_board_with_another_host_key_is_refused(boards: Boards) -> None:
    wrong = boards.folder / "wrong_known_hosts"
    first, second = boards.boards
    # The first board's address with the second board's key.
    wrong.write_text(
        f"{first.address} {second.host_key.with_suffix('.pub').read_text()}"
    )
    scenario = _scenario(boards, first_ssh={"known_hosts": str(wrong)})
    testbed = SshTestbed(scenario, prefix="wrongkey")
    try:
        with pytest.raises(TestbedError) as error:
            testbed.connect()
    finally:
        testbed.close()
    message = str(error.value)
    assert first.address in message
    assert "host key" in message
    assert "d1" in message


@pytest.mark.root
def test_an_unchecked_host_key_is_a_warning(
    boards: Boards, caplog: pytest.LogCaptureFixture
) -> None:
    empty = boards.folder / "unused_known_hosts"
    empty.write_text("")
    scenario = _scenario(
        boards, first_ssh={"known_hosts": str(empty), "host_key_check": False}
    )
    testbed = SshTestbed(scenario, prefix="unchecked")
    try:
        with caplog.at_level(logging.WARNING, logger="splitlab.boards"):
            testbed.connect()
    finally:
        testbed.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "NOT checked" in text and boards.boards[0].address in text for text in warnings
    )


@pytest.mark.root
def test_a_board_missing_from_known_hosts_is_refused(boards: Boards) -> None:
    empty = boards.folder / "empty_known_hosts"
    empty.write_text("")
    scenario = _scenario(boards, first_ssh={"known_hosts": str(empty)})
    testbed = SshTestbed(scenario, prefix="nokey")
    try:
        with pytest.raises(TestbedError, match=boards.boards[0].address):
            testbed.connect()
    finally:
        testbed.close()


@pytest.mark.root
def test_a_missing_key_file_is_named(boards: Boards) -> None:
    missing = boards.folder / "no-such-key"
    scenario = _scenario(boards, first_ssh={"key": str(missing)})
    testbed = SshTestbed(scenario, prefix="nofile")
    try:
        with pytest.raises(ConfigError) as error:
            testbed.connect()
    finally:
        testbed.close()
    assert "ssh.key" in str(error.value)
    assert str(missing) in str(error.value)
    assert "d1" in str(error.value)


@pytest.mark.root
@pytest.mark.slow
def test_upload_start_and_cleanup_leave_nothing_behind(
    boards: Boards, tmp_path: Path
) -> None:
    # The first board is limited and loaded; the second is left as it is.
    scenario = _scenario(
        boards,
        first={"cpu_share": 0.5, "memory_mb": 512, "load": {"cpu_percent": 10}},
    )
    weights = prepare_weights(scenario)
    prefix = f"t{os.getpid()}"
    saved = tmp_path / "saved"
    testbed = SshTestbed(scenario, prefix=prefix, save_to=saved, weights=weights.path)

    # A stand-in station on the first board's peer address: it only accepts.
    listener = socket.create_server((boards.boards[0].peer, 0))
    listener.settimeout(30)
    port = listener.getsockname()[1]
    run_dirs = [boards.folder / f"work-{i}" / prefix for i in range(2)]
    try:
        started = testbed.start_devices(port=port, secret=b"k" * 32)
        accepted = [listener.accept()[0] for _ in started]

        assert [p.config.name for p in started] == ["d1", "d2"]
        for process, run_dir in zip(started, run_dirs):
            environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
            assert f"SPLITLAB_TESTBED={prefix}".encode() in environ
            assert f"PYTHONPATH={run_dir}".encode() in environ
            assert (run_dir / "weights.npz").is_file()
            assert (run_dir / "data.npz").is_file()
            # Python compiled the uploaded package: the agent runs that copy.
            assert list((run_dir / "splitlab" / "__pycache__").glob("agent.*.pyc"))
            assert (
                saved / process.config.name / f"link-{process.config.name}.sh"
            ).is_file()

        limited_run, free_run = started
        # One clock on this machine: the measured offset is the probe's error.
        for process in started:
            assert process.clock_offset_s is not None
            assert abs(process.clock_offset_s) < 0.02
        facts = json.loads((saved / "d1" / "board.json").read_text())
        assert facts["limit_mechanism"] == "cgroup-v1"
        assert facts["rate"] == "tc"
        assert limited_run.limit.mechanism == "cgroup-v1"
        assert limited_run.limit.cpu_share == 0.5
        assert limited_run.limit.memory_bytes == 512 * 2**20
        cgroup = Path(f"/proc/{limited_run.pid}/cgroup").read_text()
        assert f"splitlab-{prefix}-d1" in cgroup
        assert free_run.limit.mechanism == "none"
        assert any(
            b"stress-ng" in Path(f"/proc/{leftover.pid}/cmdline").read_bytes()
            for leftover in find_leftovers(prefix)
        )

        # This kernel has htb and IFB but no netem: the rate is the kernel's,
        # the delay the transport's.
        assert limited_run.shaping.rate == "tc"
        assert limited_run.shaping.delay in {"netem", "transport"}
        qdiscs = _qdiscs(boards.boards[0].namespace)
        assert "qdisc htb 1:" in qdiscs
        assert "qdisc tbf 20:" in qdiscs
        assert "rate 20Mbit" in qdiscs
        assert "ifb" in _run("ip", "netns", "exec", boards.boards[0].namespace,
                             "ip", "-o", "link")  # fmt: skip

        # A load change rewrites the limit of the running agent.
        changed = testbed.set_cpu_share("d1", 0.25)
        assert (changed.mechanism, changed.cpu_share) == ("cgroup-v1", 0.25)
        group = next(g for g in _cgroups(prefix) if "/cpu/" in str(g))
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "2500"

        # A killed agent takes its background load with it.
        testbed.kill_device("d1")
        deadline = time.monotonic() + 10
        while any(
            b"stress-ng" in _command(left.pid) for left in find_leftovers(prefix)
        ):
            assert time.monotonic() < deadline, "the load outlived its agent"
            time.sleep(0.2)
    finally:
        testbed.close()
        listener.close()
        with contextlib.suppress(NameError):
            for connection in accepted:
                connection.close()

    assert find_leftovers(prefix) == []
    assert _cgroups(prefix) == []
    for run_dir in run_dirs:
        assert not run_dir.exists()
    for board in boards.boards:
        assert "htb" not in _qdiscs(board.namespace)
        links = _run("ip", "netns", "exec", board.namespace, "ip", "-o", "link")
        assert "ifb" not in links
    assert set(testbed.agent_exit_codes()) == {"d1", "d2"}
    assert (saved / "d1" / "agent.log").is_file()


@pytest.mark.root
def test_a_board_without_a_working_python_is_named(
    boards: Boards,
) -> None:
    missing = boards.folder / "no-python"
    scenario = _scenario(boards, first_ssh={"python": str(missing)})
    testbed = SshTestbed(scenario, prefix=f"np{os.getpid()}")
    try:
        with pytest.raises(TestbedError) as error:
            testbed.connect()
    finally:
        testbed.close()
    assert str(missing) in str(error.value)
    assert "d1" in str(error.value)
    assert boards.boards[0].address in str(error.value)


@pytest.mark.root
@pytest.mark.slow
def test_an_upload_cut_short_leaves_no_run_directory(
    boards: Boards, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = _scenario(boards)
    weights = prepare_weights(scenario)
    prefix = f"cut{os.getpid()}"
    testbed = SshTestbed(scenario, prefix=prefix, weights=weights.path)
    testbed.connect()
    # An upload of the package a hundred times over, with a timeout far too
    # short for it: the work is cancelled mid-way.
    files = boards_module.package_files()
    monkeypatch.setattr(boards_module, "package_files", lambda: files * 100)
    monkeypatch.setattr(boards_module, "UPLOAD_TIMEOUT_S", 0.5)
    try:
        with pytest.raises(TestbedError, match="did not answer within"):
            testbed.prepare()
    finally:
        testbed.close()
    for index in range(2):
        assert not (boards.folder / f"work-{index}" / prefix).exists()


@pytest.mark.root
@pytest.mark.slow
def test_ctrl_c_during_a_run_leaves_nothing_on_the_boards(
    boards: Boards, tmp_path: Path
) -> None:
    scenario = _scenario(boards, first={"cpu_share": 0.5})
    started: list[SshTestbed] = []

    def interrupt(testbed: object) -> None:
        assert isinstance(testbed, SshTestbed)
        started.append(testbed)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, workspace=tmp_path, on_started=interrupt)
    (testbed,) = started
    prefix = testbed.prefix
    assert find_leftovers(prefix) == []
    assert _cgroups(prefix) == []
    for index, board in enumerate(boards.boards):
        assert not (boards.folder / f"work-{index}" / prefix).exists()
        assert "htb" not in _qdiscs(board.namespace)
    with ResultStore(tmp_path / "results.sqlite") as store:
        (run,) = store.runs()
    assert run.status == "incomplete"
    assert run.reason == "interrupted"


@pytest.mark.root
@pytest.mark.slow
def test_a_whole_run_on_two_boards(boards: Boards, tmp_path: Path) -> None:
    # The station listens where the route to the first board leaves; every
    # task crosses its board's shaped link.
    scenario = _scenario(boards, scheduler="fcfs", algorithm="offload-all")
    events: list[dict[str, Any]] = []
    outcome = run_scenario(scenario, workspace=tmp_path, on_event=events.append)
    assert outcome.status == "completed", outcome.reason

    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
        nodes = {node.node: node for node in store.nodes(outcome.run_id)}
    assert len(tasks) == 8
    assert {task.device for task in tasks} == {"d1", "d2"}
    assert all(task.matches_unsplit for task in tasks)
    assert all(task.delay_s > 0 for task in tasks)
    # The kernel shapes the rate, the transport adds the 5 ms latency: no
    # input arrives sooner than the link allows.
    for task in tasks:
        assert task.cut == 0
        paced_bytes = task.cut_bytes - tbf_burst_bytes(20_000_000)
        assert task.transmission_s >= 0.005 + paced_bytes * 8 / 20e6
    assert nodes["d1"].limit_mechanism == "none"
    assert any("tc qdisc add" in line for line in nodes["d1"].limit_commands)

    prefix = f"r{outcome.run_id}p{os.getpid()}"
    assert find_leftovers(prefix) == []
    for index in range(2):
        assert not (boards.folder / f"work-{index}" / prefix).exists()
    saved = tmp_path / "runs" / str(outcome.run_id) / "boards"
    for device in ("d1", "d2"):
        for script in ("link", "limit", "start", "teardown"):
            assert (saved / device / f"{script}-{device}.sh").is_file()
        assert (saved / device / "agent.log").is_file()
    shutil.rmtree(saved)
