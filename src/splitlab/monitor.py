"""Monitoring: every node's CPU, memory and RTT to the base station over a run.

A :class:`Monitor` samples its targets on a thread at a fixed interval (1 s
unless the scenario's ``monitoring.interval_s`` says otherwise).  For each
node it reads the CPU time and resident memory of the node's process and all
its descendants from ``/proc`` (CPU as a fraction of one core over the last
interval), and asks the node's :class:`RttProbe` for the round-trip time to
the base station.  Samples go to a sink, normally the run's results store
(the ``samples`` table).

The RTT probe is pluggable.  The ``local`` backend, where every node shares
this machine's loopback, times a TCP connect to the station's listening port
(:class:`TcpConnectRtt`); backends whose nodes sit behind real or emulated
links can use :class:`PingRtt`, which runs ``ping`` (optionally inside a
network namespace or through any command prefix).  On ``local`` the link
is emulated inside the transport, so this RTT is the loopback's and the
station's responsiveness, not the emulated latency.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from splitlab.errors import ConfigError
from splitlab.results import ResultStore, UsageSample

logger = logging.getLogger(__name__)

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_PING_TIME = re.compile(r"time[=<]([0-9.]+) ms")


class RttProbe(Protocol):
    """Measures one round trip to the base station, in seconds.

    Returns ``None`` when the station did not answer in time.
    """

    def __call__(self) -> float | None:
        """One measurement."""
        ...


@dataclass(frozen=True, slots=True)
class TcpConnectRtt:
    """RTT as the time a TCP connect to ``host:port`` takes.

    The kernel answers the handshake for a listening socket, so this is one
    network round trip plus the connect's own cost.
    """

    host: str
    port: int
    timeout_s: float = 1.0

    def __call__(self) -> float | None:
        """Connect, time it, and close."""
        start = time.perf_counter()
        try:
            with socket.create_connection(
                (self.host, self.port), timeout=self.timeout_s
            ):
                return time.perf_counter() - start
        except OSError as error:
            logger.debug("rtt to %s:%d: %s", self.host, self.port, error)
            return None


@dataclass(frozen=True, slots=True)
class PingRtt:
    """RTT from one ICMP echo (``ping -c 1``), run after ``prefix``.

    ``prefix`` places the ping where the node is: ``("ip", "netns", "exec",
    "ns1")`` for a namespace, an ``ssh`` command line for a board.
    """

    address: str
    prefix: tuple[str, ...] = ()
    timeout_s: float = 1.0

    def __call__(self) -> float | None:
        """Ping once and parse the reported time."""
        wait = str(max(1, math.ceil(self.timeout_s)))
        command = [*self.prefix, "ping", "-n", "-c", "1", "-W", wait, self.address]
        logger.debug("%s", shlex.join(command))
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.timeout_s + 5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.debug("ping %s: %s", self.address, error)
            return None
        found = _PING_TIME.search(result.stdout)
        return None if found is None else float(found.group(1)) / 1e3


@dataclass(frozen=True, slots=True)
class Target:
    """A node to watch: its name, its process, and how to time its RTT."""

    node: str
    pid: int
    rtt: RttProbe | None = None


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """What one node used over a run.

    Attributes
    ----------
    node:
        The node's name.
    samples:
        How many samples there are.
    cpu_mean, cpu_peak:
        Mean and largest CPU use, as fractions of one core.
    rss_peak_bytes:
        Largest resident memory of the node's processes.
    rtt_median_s:
        Median RTT to the base station, or NaN when none was measured.
    """

    node: str
    samples: int
    cpu_mean: float
    cpu_peak: float
    rss_peak_bytes: int
    rtt_median_s: float


def children_map() -> dict[int, list[int]]:
    """Every process's children, from one pass over ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(_stat_fields(int(entry.name))[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def process_tree(
    pid: int, children: Mapping[int, list[int]] | None = None
) -> list[int]:
    """``pid`` and all its descendants now alive (``pid`` first).

    ``children`` is a :func:`children_map` to reuse; read afresh when omitted.
    """
    if children is None:
        children = children_map()
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, ()))
    return tree


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name.

    Index 0 is the state (field 3 of proc(5)), so field ``n`` is ``n - 3``.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def tree_usage(
    pid: int, children: Mapping[int, list[int]] | None = None
) -> tuple[float, int] | None:
    """CPU seconds and resident bytes of ``pid`` and its descendants.

    CPU counts user and system time, and that of children already reaped,
    so it grows while the tree lives (but for a reap seen half-way through
    one reading).  ``None`` if ``pid`` is gone.
    """
    cpu_ticks = 0
    rss_bytes = 0
    found = False
    for member in process_tree(pid, children):
        try:
            fields = _stat_fields(member)
            resident = int(Path(f"/proc/{member}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        # A zombie child still holds its CPU time until its parent reaps it
        # (then the parent's cutime does), so it counts; a zombie node is gone.
        if member == pid:
            if fields[0] in ("Z", "X"):
                return None
            found = True
        # utime, stime, cutime, cstime are fields 14 to 17.
        cpu_ticks += sum(int(value) for value in fields[11:15])
        rss_bytes += resident * _PAGE_BYTES
    return (cpu_ticks / _TICKS_PER_S, rss_bytes) if found else None


Sink = Callable[[Sequence[UsageSample]], None]


class Monitor:
    """Samples targets every ``interval_s`` on a thread until stopped.

    Parameters
    ----------
    targets:
        The nodes to watch.
    interval_s:
        Time between samples.
    sink:
        Receives each round's samples; an error in it is logged and the
        monitor goes on.
    on_stop:
        Called once the thread has ended (to close what the sink writes to).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        interval_s: float,
        sink: Sink,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigError(f"monitoring interval_s must be positive: {interval_s}")
        self.targets = tuple(targets)
        self.interval_s = interval_s
        self.sink = sink
        self.on_stop = on_stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self._last: dict[str, tuple[float, float]] = {}

    def start(self) -> Monitor:
        """Take a first reading and start the sampling thread."""
        self._baseline()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.on_stop is not None:
            self.on_stop()
            self.on_stop = None

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self) -> list[UsageSample]:
        """One round: a sample of every target still alive."""
        samples = []
        children = children_map()
        for target in self.targets:
            now = time.monotonic()
            usage = tree_usage(target.pid, children)
            if usage is None:
                continue
            cpu_s, rss_bytes = usage
            cpu_fraction = None
            # The CPU total can dip for a moment while a child is reaped; only
            # what rises above its highest reading so far is new CPU time, so
            # a dip and its recovery are not counted twice.
            high = cpu_s
            if target.node in self._last:
                then, high = self._last[target.node]
                if now > then:
                    cpu_fraction = max(0.0, cpu_s - high) / (now - then)
                high = max(high, cpu_s)
            self._last[target.node] = (now, high)
            samples.append(
                UsageSample(
                    node=target.node,
                    at=time.time(),
                    cpu_fraction=cpu_fraction,
                    rss_bytes=rss_bytes,
                    rtt_s=None if target.rtt is None else target.rtt(),
                )
            )
        return samples

    def _baseline(self) -> None:
        children = children_map()
        for target in self.targets:
            usage = tree_usage(target.pid, children)
            if usage is not None:
                self._last[target.node] = (time.monotonic(), usage[0])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sink(self.sample())
            except Exception:
                logger.exception("monitoring could not record its samples")


def store_sink(store: ResultStore, run_id: int) -> Sink:
    """A sink that commits every round of samples to a run in ``store``."""

    def record(samples: Sequence[UsageSample]) -> None:
        if samples:
            store.record_samples(run_id, samples)

    return record


def summarise_usage(samples: Iterable[UsageSample]) -> tuple[NodeUsage, ...]:
    """Per node (in order of first appearance): mean and peak CPU, peak RSS,
    median RTT."""
    grouped: dict[str, list[UsageSample]] = {}
    for sample in samples:
        grouped.setdefault(sample.node, []).append(sample)
    return tuple(_usage(node, rows) for node, rows in grouped.items())


def _usage(node: str, rows: Sequence[UsageSample]) -> NodeUsage:
    cpu = [s.cpu_fraction for s in rows if s.cpu_fraction is not None]
    rtt = [s.rtt_s for s in rows if s.rtt_s is not None]
    return NodeUsage(
        node=node,
        samples=len(rows),
        cpu_mean=statistics.fmean(cpu) if cpu else math.nan,
        cpu_peak=max(cpu) if cpu else math.nan,
        rss_peak_bytes=max(s.rss_bytes for s in rows),
        rtt_median_s=statistics.median(rtt) if rtt else math.nan,
    )


def local_targets(
    *, station_pid: int, station_name: str, devices: Mapping[str, int], port: int
) -> list[Target]:
    """The ``local`` backend's targets: the station, and every device with an
    RTT by TCP connect to the station's port on loopback."""
    rtt = TcpConnectRtt("127.0.0.1", port)
    return [
        Target(station_name, station_pid),
        *(Target(name, pid, rtt) for name, pid in devices.items()),
    ]
