"""Measuring what a testbed really gives: link latency, rate and loss, CPU share.

A testbed is only as good as its emulation, so the netns testbed measures
every link and device before a run and beside ``splitlab testbed check``:

latency
    ``ping`` from the device's namespace to the base station's address; the
    median round trip, halved.
rate
    A bounded TCP transfer each way between the two namespaces; the rate is
    taken over the transfer's last three quarters, once the sender's
    congestion window has opened, and counts TCP payload.  The transfer is
    marked (DSCP CS1) so a lossy link's loss rules let it pass.
loss
    A bounded count of UDP probes each way, paced well below the link rate
    so no queue overflows; the share that never arrived.
CPU share
    A busy loop in the device's namespace, under the device's own limit:
    the CPU time it got over the wall time it ran.

Sockets are made inside a namespace by a short-lived thread that enters the
namespace (``setns``) only to create them; the sockets stay in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import re
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from splitlab.errors import TestbedError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_PROBE_BYTES = 64
# DSCP CS1 in the IP TOS byte (see splitlab.network.EXEMPT_DSCP).
_EXEMPT_TOS = 0x20
_RTT_RE = re.compile(r"time=([0-9.]+) ms")

RATE_TOLERANCE = 0.05
"""Largest relative error of a measured rate or latency that passes."""

LOSS_TOLERANCE_PP = 1.0
"""Largest error of a measured loss, in percentage points, that passes."""

CPU_TOLERANCE = 0.05
"""Largest relative error of a measured CPU share that passes."""


@dataclass(frozen=True, slots=True)
class Effort:
    """How long and how hard a check measures.

    Attributes
    ----------
    pings:
        Echo requests per link.
    transfer_s:
        Intended length of each rate transfer at the configured rate.
    probes:
        UDP loss probes per direction (only on lossy links).
    busy_s:
        Length of each device's busy loop.
    """

    pings: int = 20
    transfer_s: float = 2.0
    probes: int = 5000
    busy_s: float = 2.0


QUICK = Effort(pings=10, transfer_s=1.0, probes=1000, busy_s=1.0)
"""The effort of the check before a run."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """One configured quantity beside what was measured.

    Attributes
    ----------
    node:
        The device the quantity belongs to.
    quantity:
        What was measured, with its unit (``latency_ms``, ``uplink_mbps``,
        ``downlink_mbps``, ``uplink_loss_percent``, ``downlink_loss_percent``,
        ``cpu_share``).
    configured:
        The scenario's value.
    measured:
        The measured value.
    """

    node: str
    quantity: str
    configured: float
    measured: float

    @property
    def absolute(self) -> bool:
        """Whether the error is a difference (loss) rather than a ratio."""
        return self.quantity.endswith("_percent") or self.configured == 0

    @property
    def error(self) -> float:
        """Measured less configured, relative to configured unless absolute."""
        if self.absolute:
            return self.measured - self.configured
        return (self.measured - self.configured) / self.configured

    @property
    def tolerance(self) -> float:
        """The largest error that counts as a faithful emulation."""
        if self.quantity.endswith("_percent"):
            return LOSS_TOLERANCE_PP
        if self.quantity == "cpu_share":
            return CPU_TOLERANCE
        if self.configured == 0:
            # No configured latency: a fraction of a millisecond is routing.
            return 0.5
        return RATE_TOLERANCE

    @property
    def within(self) -> bool:
        """Whether the error is within the tolerance."""
        return abs(self.error) <= self.tolerance


@dataclass(frozen=True, slots=True)
class TestbedCheck:
    """Every comparison of one check, in the order measured."""

    __test__ = False  # not a pytest test class despite the name

    comparisons: tuple[Comparison, ...]

    def get(self, node: str, quantity: str) -> Comparison:
        """The comparison of ``quantity`` on ``node``.

        Raises
        ------
        KeyError
            If it was not measured.
        """
        for comparison in self.comparisons:
            if comparison.node == node and comparison.quantity == quantity:
                return comparison
        raise KeyError(f"{node} {quantity}")

    @property
    def passed(self) -> bool:
        """Whether every comparison is within its tolerance."""
        return all(comparison.within for comparison in self.comparisons)

    def to_json(self) -> str:
        """The check as JSON (a list of comparisons)."""
        return json.dumps([asdict(comparison) for comparison in self.comparisons])

    @classmethod
    def from_json(cls, text: str) -> TestbedCheck:
        """Read back what :meth:`to_json` wrote."""
        return cls(tuple(Comparison(**item) for item in json.loads(text)))


def in_namespace(namespace: str, make: Callable[[], T]) -> T:
    """Call ``make`` in a thread that has entered network namespace ``namespace``.

    Sockets ``make`` creates belong to that namespace for their whole life,
    wherever they are used later.

    Raises
    ------
    TestbedError
        If the namespace cannot be entered.
    """
    results: list[T] = []
    failures: list[BaseException] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        except OSError as error:
            failures.append(
                TestbedError(f"no network namespace {namespace}: {error.strerror}")
            )
            return
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                failures.append(
                    TestbedError(f"cannot enter {namespace}: {os.strerror(code)}")
                )
                return
            results.append(make())
        except BaseException as error:
            failures.append(error)
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter, name=f"in-{namespace}")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
    return results[0]


def measure_rtt_s(namespace: str, address: str, *, count: int) -> float:
    """The median round trip of ``count`` pings from ``namespace`` to ``address``.

    The median, because a ping that waits for a busy CPU says nothing about
    the link.

    Raises
    ------
    TestbedError
        If no reply came back.
    """
    command = ["ip", "netns", "exec", namespace, "ping", "-n", "-c", str(count),
               "-i", "0.05", "-W", "2", address]  # fmt: skip
    logger.debug("%s", shlex.join(command))
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=count * 0.05 + 30,
        check=False,
    )
    times_ms = [float(value) for value in _RTT_RE.findall(done.stdout)]
    if not times_ms:
        raise TestbedError(
            f"no ping from {namespace} reached {address}: {done.stdout.strip()} "
            f"{done.stderr.strip()}"
        )
    return statistics.median(times_ms) / 1e3


def measure_rate_bps(
    sender: str,
    receiver: str,
    receiver_address: str,
    *,
    size_bytes: int,
    timeout_s: float,
) -> float:
    """TCP payload rate from namespace ``sender`` to ``receiver``, in bit/s.

    ``size_bytes`` are sent; the rate is measured at the receiver from the
    moment a quarter of them has arrived to the last byte.

    Raises
    ------
    TestbedError
        If the transfer did not finish within ``timeout_s``.
    """
    server = in_namespace(receiver, lambda: socket.create_server((receiver_address, 0)))
    # Marked so the link's loss rules let the transfer through: it measures
    # the rate, which TCP's reaction to loss would hide.
    server.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _EXEMPT_TOS)
    port = server.getsockname()[1]
    server.settimeout(timeout_s)
    received: list[tuple[float, int]] = []
    failures: list[BaseException] = []

    def receive() -> None:
        try:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(timeout_s)
                total = 0
                while chunk := connection.recv(1 << 16):
                    total += len(chunk)
                    received.append((time.monotonic(), total))
        except OSError as error:
            failures.append(error)

    reader = threading.Thread(target=receive, name="rate-receiver")
    reader.start()
    try:
        client = in_namespace(sender, _tcp_socket)
        with client:
            client.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _EXEMPT_TOS)
            client.settimeout(timeout_s)
            client.connect((receiver_address, port))
            client.settimeout(timeout_s)
            block = b"\0" * (1 << 16)
            left = size_bytes
            while left > 0:
                left -= client.send(block[: min(left, len(block))])
            client.shutdown(socket.SHUT_WR)
            reader.join(timeout_s)
    except OSError as error:
        raise TestbedError(
            f"rate transfer {sender} -> {receiver} failed: {error}"
        ) from error
    finally:
        server.close()
        reader.join()
    if failures or not received or received[-1][1] < size_bytes:
        raise TestbedError(
            f"rate transfer {sender} -> {receiver} did not finish in "
            f"{timeout_s:.0f} s ({failures[0] if failures else 'short'})"
        )
    start_s, start_bytes = next(
        (when, total) for when, total in received if total >= size_bytes // 4
    )
    end_s, end_bytes = received[-1]
    if end_s <= start_s:
        raise TestbedError(f"rate transfer {sender} -> {receiver} was too short")
    return (end_bytes - start_bytes) * 8 / (end_s - start_s)


def measure_loss(
    sender: str,
    receiver: str,
    receiver_address: str,
    *,
    probes: int,
    rate_bps: float,
    latency_s: float,
) -> float:
    """The share of ``probes`` UDP datagrams lost from ``sender`` to ``receiver``.

    Probes are paced at a tenth of ``rate_bps`` (at most 2,000 a second), so
    only the link's loss, not a full queue, drops them.
    """
    inbox = in_namespace(
        receiver,
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )
    outbox = in_namespace(
        sender, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    with inbox, outbox:
        inbox.bind((receiver_address, 0))
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        target = inbox.getsockname()
        wire_bits = (_PROBE_BYTES + 42) * 8
        interval_s = max(wire_bits / (rate_bps / 10), 1 / 2000)
        seen: set[int] = set()
        stop = threading.Event()

        def receive() -> None:
            inbox.settimeout(0.1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    data = inbox.recv(_PROBE_BYTES)
                    seen.add(struct.unpack_from("!I", data)[0])

        reader = threading.Thread(target=receive, name="loss-receiver")
        reader.start()
        try:
            start_s = time.monotonic()
            payload = bytearray(_PROBE_BYTES)
            for number in range(probes):
                struct.pack_into("!I", payload, 0, number)
                outbox.sendto(payload, target)
                pause_s = start_s + (number + 1) * interval_s - time.monotonic()
                if pause_s > 0:
                    time.sleep(pause_s)
            time.sleep(2 * latency_s + 0.5)
        finally:
            stop.set()
            reader.join()
    return 1 - len(seen) / probes


def _tcp_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


_BUSY_LOOP = """
import sys, time
sys.stdin.readline()
wall0, cpu0 = time.monotonic(), time.process_time()
end = wall0 + float(sys.argv[1])
while time.monotonic() < end:
    pass
print((time.process_time() - cpu0) / (time.monotonic() - wall0))
"""


def measure_cpu_share(
    command_prefix: list[str],
    *,
    busy_s: float,
    limit: Callable[[int], Callable[[], None]],
    environment: dict[str, str] | None = None,
) -> float:
    """CPU time over wall time of a busy loop held by ``limit``.

    ``limit(pid)`` puts the loop's process under the device's limit and
    returns what takes it off; the loop starts only once the limit holds.
    """
    command = [*command_prefix, sys.executable, "-c", _BUSY_LOOP, str(busy_s)]
    logger.debug("%s", shlex.join(command))
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        release = limit(process.pid)
        try:
            output, _ = process.communicate("go\n", timeout=busy_s * 10 + 30)
        finally:
            release()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    try:
        return float(output.strip())
    except ValueError:
        raise TestbedError(f"the CPU busy loop said {output!r}") from None


def rate_transfer_bytes(rate_bps: float, effort: Effort) -> int:
    """How many bytes a rate transfer sends: ``effort.transfer_s`` worth."""
    return max(64 * 1024, math.ceil(rate_bps / 8 * effort.transfer_s))
