"""The userspace delay stage: link latency and jitter without ``tc netem``.

Some kernels (this project's CI machine among them) are built without the
netem qdisc, so the netns testbed cannot ask ``tc`` for delay.  Instead the
hub namespace routes each delayed link's packets, both directions, into a
TUN device of that link (see :mod:`splitlab.network`); this program reads
every packet from the TUN device, holds it for the link's latency plus a
jitter draw, and writes it back into the same device, from which the kernel
routes it on to its destination.

Packets of one link leave in the order they came (a packet's release time is
never before the previous one's), as on a wire; jitter is a normal draw
truncated so the delay never goes below zero, seeded per link.  One thread
serves every link with ``select``, waking at the earliest release time.

Run by the testbed as ``ip netns exec HUB python -m splitlab.delay --seed S
TUN=LATENCY_MS,JITTER_MS ...``; it prints ``ready`` once it holds every TUN
device and runs until it is terminated (or its starting process dies).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import logging
import math
import os
import random
import select
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from splitlab.errors import ConfigError, TestbedError
from splitlab.lifetime import die_with_parent

logger = logging.getLogger(__name__)

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_MAX_PACKET_BYTES = 65_536
# Packets read from one device per wake-up, so a busy link cannot starve
# the releases of the others.
_BATCH = 64
_REALTIME_PRIORITY = 10


@dataclass(frozen=True, slots=True)
class DelayedLink:
    """One TUN device and the delay its packets get.

    Attributes
    ----------
    tun:
        The TUN device's name.
    latency_s:
        Mean one-way delay.
    jitter_s:
        Standard deviation of the normal draw added to each packet's delay.
    """

    tun: str
    latency_s: float
    jitter_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> DelayedLink:
        """Read ``TUN=LATENCY_MS,JITTER_MS`` (the jitter may be left out).

        Raises
        ------
        ConfigError
            If the text has another form or a value is negative.
        """
        tun, _, values = text.partition("=")
        latency, _, jitter = values.partition(",")
        try:
            latency_ms = float(latency)
            jitter_ms = float(jitter) if jitter else 0.0
        except ValueError:
            raise ConfigError(
                f"delayed link {text!r} is not TUN=LATENCY_MS,JITTER_MS"
            ) from None
        if not tun or not all(
            math.isfinite(v) and v >= 0 for v in (latency_ms, jitter_ms)
        ):
            raise ConfigError(
                f"delayed link {text!r} needs a TUN name and non-negative times"
            )
        return cls(tun, latency_ms / 1e3, jitter_ms / 1e3)


def open_tun(name: str) -> int:
    """Attach to the existing TUN device ``name``; return its file descriptor.

    Raises
    ------
    TestbedError
        If ``/dev/net/tun`` cannot be opened or there is no such device.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    except OSError as error:
        raise TestbedError(f"cannot open /dev/net/tun: {error.strerror}") from None
    try:
        request = struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, request)
    except OSError as error:
        os.close(fd)
        raise TestbedError(
            f"cannot attach to TUN device {name!r}: {error.strerror}"
        ) from None
    return fd


class DelayStage:
    """Holds every packet of its links for the link's delay.

    Parameters
    ----------
    links:
        The delayed links.
    seed:
        Seed of the jitter draws; link ``i`` draws from ``seed + i``.
    """

    def __init__(self, links: Sequence[DelayedLink], *, seed: int) -> None:
        self._links = {open_tun(link.tun): link for link in links}
        self._rngs = {fd: random.Random(seed + i) for i, fd in enumerate(self._links)}
        self._last_release_s = dict.fromkeys(self._links, -math.inf)
        # (release time, arrival order, device, packet)
        self._held: list[tuple[float, int, int, bytes]] = []
        self._arrivals = 0

    def run(self, *, until_s: float = math.inf) -> None:
        """Forward packets until ``until_s`` on the monotonic clock."""
        fds = list(self._links)
        while True:
            now = time.monotonic()
            if now >= until_s:
                return
            wake_s = self._held[0][0] if self._held else until_s
            timeout = None if math.isinf(wake_s) else max(0.0, wake_s - now)
            readable, _, _ = select.select(fds, [], [], timeout)
            for fd in readable:
                self._take(fd)
            self._release()

    def close(self) -> None:
        """Let go of every TUN device."""
        for fd in self._links:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _take(self, fd: int) -> None:
        link = self._links[fd]
        for _ in range(_BATCH):
            try:
                packet = os.read(fd, _MAX_PACKET_BYTES)
            except BlockingIOError:
                return
            release_s = max(
                time.monotonic() + link.latency_s + self._jitter_s(fd, link),
                self._last_release_s[fd],
            )
            self._last_release_s[fd] = release_s
            self._arrivals += 1
            heapq.heappush(self._held, (release_s, self._arrivals, fd, packet))

    def _release(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            _, _, fd, packet = heapq.heappop(self._held)
            try:
                os.write(fd, packet)
            except OSError as error:
                # As a full queue on a wire would, a refused write drops it.
                logger.debug("dropped a packet on %s: %s", self._links[fd].tun, error)

    def _jitter_s(self, fd: int, link: DelayedLink) -> float:
        if link.jitter_s == 0:
            return 0.0
        while True:
            jitter_s = self._rngs[fd].gauss(0.0, link.jitter_s)
            if link.latency_s + jitter_s >= 0:
                return jitter_s


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m splitlab.delay``."""
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("SPLITLAB_LOG", "WARNING"),
        format="%(asctime)s delay %(levelname)s %(message)s",
    )
    parser = argparse.ArgumentParser(
        prog="python -m splitlab.delay",
        description="Hold the packets of TUN devices for a link's latency.",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="Run at real-time priority, so a busy CPU does not delay releases.",
    )
    parser.add_argument("links", nargs="+", metavar="TUN=LATENCY_MS,JITTER_MS")
    args = parser.parse_args(argv)
    try:
        stage = DelayStage(
            [DelayedLink.parse(text) for text in args.links], seed=args.seed
        )
    except (ConfigError, TestbedError) as error:
        logger.error("%s", error)
        return error.exit_code
    if args.realtime:
        # A forwarder that waits for a CPU adds that wait to every packet.
        priority = os.sched_param(_REALTIME_PRIORITY)
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, priority)
        except OSError as error:
            logger.warning("no real-time priority: %s", error.strerror)
    print("ready", flush=True)
    try:
        stage.run()
    except KeyboardInterrupt:
        return 0
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
