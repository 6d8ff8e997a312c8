"""The ``local`` testbed: every node its own OS process on this machine.

The base station and each device run as separate Python processes that talk
TCP over loopback; links are emulated in the transport (see
:mod:`splitlab.shaping`); each device process is held to its CPU share and
memory with the best mechanism the machine offers (see :mod:`splitlab.limit`).
Teardown always runs and leaves no process or control group behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from splitlab.errors import TestbedError
from splitlab.limit import AppliedLimit, LimitSpec, Mechanism, ProcessLimiter
from splitlab.scenario import DeviceConfig, Scenario
from splitlab.station import StationConfig

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0


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
        self.limiter = ProcessLimiter(prefix, prefer=prefer)
        self.station: subprocess.Popen[str] | None = None
        self.devices: dict[str, DeviceProcess] = {}

    @property
    def mechanism(self) -> str:
        """The CPU limit mechanism the devices run under."""
        return self.limiter.mechanism

    def start_station(self, config: StationConfig) -> Iterator[dict[str, Any]]:
        """Start the base station; yield its events until it exits."""
        command = [sys.executable, "-m", "splitlab.station"]
        logger.debug("starting the base station: %s", " ".join(command))
        self.station = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.station.stdin is not None and self.station.stdout is not None
        self.station.stdin.write(config.to_json() + "\n")
        self.station.stdin.close()
        return _events(self.station.stdout)

    def start_devices(self, *, port: int, secret: bytes) -> list[DeviceProcess]:
        """Start every device agent and put each under its CPU and memory limit."""
        started = []
        for config in self.scenario.devices:
            command = [sys.executable, "-m", "splitlab.agent"]
            logger.debug("starting device %s: %s", config.name, " ".join(command))
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, start_new_session=True
            )
            try:
                limit = self.limiter.apply(
                    process.pid,
                    LimitSpec(cpu_share=config.share, memory_bytes=config.memory_bytes),
                    name=config.name,
                )
            except BaseException:
                process.kill()
                raise
            for command_line in limit.commands:
                logger.debug("%s: %s", config.name, command_line)
            line = json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "node": config.name,
                    "secret": secret.hex(),
                    "threads": 1,
                }
            )
            assert process.stdin is not None
            process.stdin.write(line.encode() + b"\n")
            process.stdin.close()
            device = DeviceProcess(config, process, limit)
            self.devices[config.name] = device
            started.append(device)
        return started

    def kill_device(self, name: str) -> None:
        """Kill one device's process at once (fault injection)."""
        try:
            device = self.devices[name]
        except KeyError:
            raise TestbedError(f"no device {name!r} in this testbed") from None
        device.process.kill()

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


def _events(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("the station wrote a line that is not an event: %r", line)
            continue
        if isinstance(event, dict) and "event" in event:
            yield event
