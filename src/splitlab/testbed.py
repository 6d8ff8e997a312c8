"""The ``local`` testbed: every node its own OS process on this machine.

The base station and each device run as separate Python processes that talk
TCP over loopback; links are emulated in the transport (see
:mod:`splitlab.shaping`); each device process is held to its CPU share and
memory with the best mechanism the machine offers (see :mod:`splitlab.limit`).
Teardown always runs and leaves no process or control group behind.  The
``netns`` testbed (:mod:`splitlab.netns`) extends this one: it places the
same processes in network namespaces and lets the kernel shape the links.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from splitlab.errors import ConfigError, TestbedError
from splitlab.lifetime import PARENT_VARIABLE
from splitlab.limit import (
    AppliedLimit,
    LimitSpec,
    Mechanism,
    ProcessLimiter,
    cleanup_prefix,
    detect_capabilities,
)
from splitlab.monitor import RttProbe, TcpConnectRtt
from splitlab.scenario import DeviceConfig, LoadConfig, Scenario
from splitlab.station import StationConfig

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
# How long every agent together may take to import and load its data set.
READY_TIMEOUT_S = 180.0
# The prefix :func:`splitlab.experiment.run_scenario` gives a run.
_RUN_PREFIX = re.compile(r"r\d+p(\d+)")
# Every process a testbed starts carries its run prefix in this variable, so
# `splitlab testbed down` can find what a killed CLI left running.
PREFIX_VARIABLE = "SPLITLAB_TESTBED"


@dataclass(frozen=True, slots=True)
class DeviceProcess:
    """A started device agent and the limit it runs under."""

    config: DeviceConfig
    process: subprocess.Popen[bytes]
    limit: AppliedLimit


class LocalTestbed:
    """Starts, limits and stops the processes of one run.

    Parameters
    ----------
    scenario:
        The scenario whose nodes to start.
    prefix:
        A name unique to the run, used for control groups.
    prefer:
        Force a CPU limit mechanism instead of the best available.
    """

    def __init__(
        self, scenario: Scenario, *, prefix: str, prefer: Mechanism | None = None
    ) -> None:
        self.scenario = scenario
        self.prefix = prefix
        self.limiter = ProcessLimiter(prefix, prefer=prefer)
        self.station: subprocess.Popen[str] | None = None
        self.devices: dict[str, DeviceProcess] = {}
        self.loads: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def station_host(self) -> str:
        """The address the base station listens on and the devices reach."""
        return "127.0.0.1"

    def rtt_probe(self, node: str, port: int) -> RttProbe:
        """How the monitor times ``node``'s round trip to the base station.

        Here, a TCP connect to the station's port on loopback.
        """
        return TcpConnectRtt(self.station_host, port)

    def node_command(self, node: str, command: list[str]) -> list[str]:
        """``command`` as it is run for ``node`` (the base station or a device).

        The local testbed runs it as it is; a testbed that places nodes
        elsewhere (a network namespace) wraps it.
        """
        return command

    @property
    def mechanism(self) -> str:
        """The CPU limit mechanism the devices run under."""
        return self.limiter.mechanism

    def start_station(self, config: StationConfig) -> Iterator[dict[str, Any]]:
        """Start the base station; yield its events until it exits."""
        config = replace(config, host=self.station_host)
        command = self.node_command(
            self.scenario.base_station.name, [sys.executable, "-m", "splitlab.station"]
        )
        logger.debug("starting the base station: %s", " ".join(command))
        self.station = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=self._environment(),
        )
        assert self.station.stdin is not None and self.station.stdout is not None
        self.station.stdin.write(config.to_json() + "\n")
        self.station.stdin.close()
        return _events(self.station.stdout)

    def start_devices(self, *, port: int, secret: bytes) -> list[DeviceProcess]:
        """Start every device agent and put each under its CPU and memory limit.

        The agents start at full speed and load the scenario's data set
        first; only when every one has said ``ready`` are the limits, pins and
        loads set and the agents told to go on and connect.
        """
        data = self.scenario.data
        warm = {
            "dataset": data.dataset,
            "data_dir": None if data.dir is None else str(data.dir),
            "test_fraction": self.scenario.training.test_fraction,
            "seed": self.scenario.seed,
        }
        spawned: list[tuple[DeviceConfig, subprocess.Popen[bytes]]] = []
        try:
            for config in self.scenario.devices:
                command = self.node_command(
                    config.name, [sys.executable, "-m", "splitlab.agent"]
                )
                logger.debug("starting device %s: %s", config.name, " ".join(command))
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    start_new_session=True,
                    env=self._environment(),
                )
                spawned.append((config, process))
                line = json.dumps(
                    {
                        "host": self.station_host,
                        "port": port,
                        "node": config.name,
                        "secret": secret.hex(),
                        "threads": 1,
                        "warm": warm,
                    }
                )
                assert process.stdin is not None
                process.stdin.write(line.encode() + b"\n")
                process.stdin.flush()
            deadline = time.monotonic() + READY_TIMEOUT_S
            for config, process in spawned:
                _await_ready(config.name, process, deadline)
            return [
                self._hold_and_release(index, config, process)
                for index, (config, process) in enumerate(spawned)
            ]
        except BaseException:
            for _, process in spawned:
                if process.pid not in {d.process.pid for d in self.devices.values()}:
                    process.kill()
            raise

    def _hold_and_release(
        self, index: int, config: DeviceConfig, process: subprocess.Popen[bytes]
    ) -> DeviceProcess:
        """Put one ready agent under its limit, pin and load; then let it go."""
        limit = self.limiter.apply(
            process.pid,
            LimitSpec(cpu_share=config.share, memory_bytes=config.memory_bytes),
            name=config.name,
        )
        device = DeviceProcess(config, process, limit)
        self.devices[config.name] = device
        if config.cpus is not None:
            pin(process.pid, config.cpus, field=f"devices[{index}].cpus")
        if config.load is not None:
            load = self.start_load(index, config, limit)
            if load is not None:
                self.loads[config.name] = load
        for command_line in limit.commands:
            logger.debug("%s: %s", config.name, command_line)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.close()
        return device

    def start_load(
        self, index: int, config: DeviceConfig, limit: AppliedLimit
    ) -> subprocess.Popen[bytes] | None:
        """Start device ``index``'s background load in the groups of ``limit``.

        Returns the load's process, or ``None`` when the device has no load;
        the caller stops it.

        Raises
        ------
        ConfigError
            If the limit holds no cgroups the load could join.
        """
        assert config.load is not None
        command = load_command(config.load, cpus=config.cpus)
        if not command:
            return None
        if not limit.groups:
            raise ConfigError(
                f"devices[{index}].load needs a cgroup limit mechanism, so the "
                f"load competes for the device's share; this run uses "
                f"{limit.mechanism}"
            )
        # The load joins the device's groups before stress-ng starts, so all
        # of its workers count against the device's CPU share and memory.
        joins = "; ".join(
            f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))}"
            for group in limit.groups
        )
        shell = f"{joins}; exec {shlex.join(command)}"
        wrapped = ["setpriv", "--pdeathsig", "TERM", "--", "sh", "-c", shell]
        logger.debug("%s load: %s", config.name, shlex.join(wrapped))
        return subprocess.Popen(
            wrapped,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._environment(),
        )

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            PREFIX_VARIABLE: self.prefix,
            PARENT_VARIABLE: str(os.getpid()),
        }

    def kill_device(self, name: str) -> None:
        """Kill one device's process at once (fault injection)."""
        try:
            device = self.devices[name]
        except KeyError:
            raise TestbedError(f"no device {name!r} in this testbed") from None
        device.process.kill()

    def set_cpu_share(self, name: str, share: float) -> AppliedLimit:
        """Hold one running device to a new CPU share (a load change)."""
        try:
            device = self.devices[name]
        except KeyError:
            raise TestbedError(f"no device {name!r} in this testbed") from None
        pid = device.process.pid
        # The device's background load shares its groups; it follows the
        # device into the new ones.
        companions = {
            other
            for group in device.limit.groups
            for other in _read_pids(group / "cgroup.procs")
            if other != pid
        }
        self.limiter.release(pid)
        limit = self.limiter.apply(
            pid,
            LimitSpec(cpu_share=share, memory_bytes=device.config.memory_bytes),
            name=name,
        )
        for command_line in limit.commands:
            logger.debug("%s: %s", name, command_line)
        for group in limit.groups:
            for other in sorted(companions):
                logger.debug("echo %d > %s", other, group / "cgroup.procs")
                with contextlib.suppress(ProcessLookupError):
                    (group / "cgroup.procs").write_text(str(other))
        self.devices[name] = replace(device, limit=limit)
        return limit

    def cut_link(self, name: str) -> None:
        """Drop one device's connection at once (a cut link); it reconnects."""
        try:
            device = self.devices[name]
        except KeyError:
            raise TestbedError(f"no device {name!r} in this testbed") from None
        device.process.send_signal(signal.SIGUSR1)

    def station_exit_code(self) -> int | None:
        """Wait for the station to exit and return its exit code."""
        if self.station is None:
            return None
        try:
            return self.station.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop every process still running and remove every limit."""
        # A device held by SIGSTOP cycles must be released before it can act
        # on SIGTERM.
        for device in self.devices.values():
            self.limiter.release(device.process.pid)
        processes: list[subprocess.Popen[Any]] = [
            device.process for device in self.devices.values()
        ]
        processes.extend(self.loads.values())
        if self.station is not None:
            processes.append(self.station)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.limiter.close()


def _read_pids(path: Path) -> set[int]:
    try:
        return {int(pid) for pid in path.read_text().split()}
    except OSError:
        return set()


def load_command(load: LoadConfig, *, cpus: tuple[int, ...] | None) -> list[str]:
    """The ``stress-ng`` command of a background load; empty when there is none.

    A CPU worker busy ``cpu_percent`` of the time, and a memory worker that
    allocates ``memory_mb`` once and holds it without using CPU.
    """
    command = ["stress-ng", "--quiet"]
    if load.cpu_percent > 0:
        command += ["--cpu", "1", "--cpu-load", str(load.cpu_percent)]
    if load.memory_mb > 0:
        command += ["--vm", "1", "--vm-bytes", f"{load.memory_mb}m", "--vm-hang", "0"]
    if len(command) == 2:
        return []
    if shutil.which("stress-ng") is None:
        raise TestbedError("background load needs stress-ng (Debian package stress-ng)")
    if cpus is not None:
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    return command


def pin(pid: int, cpus: tuple[int, ...], *, field: str) -> None:
    """Let process ``pid`` (and what it starts later) run only on ``cpus``.

    Raises
    ------
    ConfigError
        If a CPU is not one of this machine's; the message names ``field``.
    """
    available = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - available)
    if missing:
        raise ConfigError(
            f"{field} names CPU {missing[0]}, but this machine offers CPUs "
            f"{', '.join(map(str, sorted(available)))}"
        )
    logger.debug("taskset -pc %s %d", ",".join(map(str, cpus)), pid)
    os.sched_setaffinity(pid, cpus)


@dataclass(frozen=True, slots=True)
class Leftover:
    """A process a testbed started that is still running."""

    pid: int
    prefix: str
    command: str


def find_leftovers(prefix: str | None = None) -> list[Leftover]:
    """Processes started by a testbed (of ``prefix``, or any) still running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        tag = PREFIX_VARIABLE.encode() + b"="
        for variable in environ:
            if variable.startswith(tag):
                owner = variable[len(tag) :].decode(errors="replace")
                if prefix is None or owner == prefix:
                    found.append(
                        Leftover(int(entry.name), owner, command.decode().strip())
                    )
    return found


def teardown(prefix: str | None = None) -> list[str]:
    """Stop every leftover process and remove every leftover control group.

    Returns one line per thing removed.  ``prefix`` limits the sweep to one
    run; without it, everything any splitlab testbed left is removed except
    what belongs to a run whose command is still running (see
    :func:`owner_alive`).
    """
    removed = []
    leftovers = [
        leftover
        for leftover in find_leftovers(prefix)
        if prefix is not None or not owner_alive(leftover.prefix)
    ]
    for leftover in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover.pid, signal.SIGCONT)
            os.kill(leftover.pid, signal.SIGKILL)
            removed.append(f"killed pid {leftover.pid} ({leftover.command})")
    prefixes = (
        {prefix}
        if prefix
        else {each for each in group_prefixes() if not owner_alive(each)}
        | {leftover.prefix for leftover in leftovers}
    )
    for each in sorted(prefixes):
        removed.extend(f"removed {group}" for group in cleanup_prefix(each))
    return removed


def owner_alive(prefix: str) -> bool:
    """True while the command that started run ``prefix`` is still running.

    A run's prefix is ``r<run>p<pid>``, the pid being the CLI's (or the
    process's that called :func:`splitlab.experiment.run_scenario`); a sweep
    without a prefix leaves such a run alone.  Prefixes of another form have
    no known owner.
    """
    found = _RUN_PREFIX.fullmatch(prefix)
    if found is None:
        return False
    pid = int(found.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_prefixes() -> set[str]:
    """Run prefixes of the splitlab control groups on this machine."""
    capabilities = detect_capabilities()
    roots = {
        root
        for root in (
            capabilities.cgroup_v2_path,
            capabilities.cgroup_v1_cpu_path,
            capabilities.cgroup_v1_memory_path,
        )
        if root is not None
    }
    prefixes = set()
    for root in roots:
        for group in root.rglob("splitlab-*"):
            if group.is_dir():
                prefixes.add(group.name.removeprefix("splitlab-").split("-", 1)[0])
    return prefixes


def _await_ready(name: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until an agent says ``ready`` on standard output.

    Raises
    ------
    TestbedError
        If it exits or stays silent until ``deadline``.
    """
    assert process.stdout is not None
    remaining_s = deadline - time.monotonic()
    readable, _, _ = select.select([process.stdout], [], [], max(0.0, remaining_s))
    line = process.stdout.readline() if readable else b""
    process.stdout.close()
    if line.strip() != b"ready":
        code = process.poll()
        state = "is still silent" if code is None else f"exited with code {code}"
        raise TestbedError(
            f"device {name} did not get ready within {READY_TIMEOUT_S:.0f} s "
            f"(it {state})"
        )


def _events(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("the station wrote a line that is not an event: %r", line)
            continue
        if isinstance(event, dict) and "event" in event:
            yield event
