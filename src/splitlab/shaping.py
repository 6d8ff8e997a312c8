"""Link emulation in the transport: latency, rate and jitter on a channel.

The ``local`` backend has no kernel shaping, so a :class:`ShapedSender`
delays the writes of a :class:`~splitlab.wire.Channel` as the link described
by a :class:`~splitlab.link.LinkSpec` would.  A frame of ``s`` bytes (the whole
encoded frame) submitted at ``t`` waits for the link to be free,
``start = max(t, free_at)``, occupies it until ``free_at = start + 8 s / R``,
and is written to the socket at ``deliver = free_at + latency + jitter``,
never before the previous frame's delivery, since a TCP stream does not
reorder.  Jitter is drawn from a seeded normal distribution truncated so
that ``latency + jitter >= 0``.

One background thread writes the frames in submission order.  A frame's
bytes are released in chunks, each when its last bit would arrive over the
link, the last chunk exactly at the delivery instant: the thread sleeps
until shortly before it and then yields in a short spin, so that even small
frames arrive within a fraction of a millisecond of their scheduled time.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from splitlab.errors import ConfigError, ProtocolError
from splitlab.link import LinkSpec
from splitlab.wire import Channel, ConnectionClosed, MessageKind, Payload

logger = logging.getLogger(__name__)

# The last stretch before a delivery is spun rather than slept, because a
# sleep may overshoot by a fraction of a millisecond.
SPIN_S = 0.001


@dataclass(frozen=True, slots=True)
class Transfer:
    """When one frame uses the emulated link (``time.monotonic()`` seconds).

    Attributes
    ----------
    size_bytes:
        Bytes of the whole encoded frame.
    submitted_s:
        When the frame was handed to :meth:`ShapedSender.send`.
    start_s:
        When the link became free for it and its transmission began.
    free_s:
        When its last bit left, ``start_s + 8 * size_bytes / rate_bps``.
    deliver_s:
        When its bytes are written to the socket, after latency and jitter.
    """

    size_bytes: int
    submitted_s: float
    start_s: float
    free_s: float
    deliver_s: float

    @property
    def queued_s(self) -> float:
        """How long the frame waited for the link to be free."""
        return self.start_s - self.submitted_s


class ShapedSender:
    """Send a channel's messages through an emulated link, in FIFO order.

    :meth:`send` returns at once with the frame's schedule; a background
    thread writes each frame at its delivery instant.  Everything this
    channel sends must go through the sender, so that frames reach the
    socket in the order their sequence numbers were taken.

    Parameters
    ----------
    channel:
        The channel whose writes are delayed.  The sender does not close it.
    spec:
        The link to emulate, or ``None`` for an unshaped channel (frames
        are written as soon as the writer thread reaches them).
    seed:
        Seed of the jitter draws, so a run's jitter can be repeated.

    Raises
    ------
    ConfigError
        If the spec has a rate that is not positive, or a negative or
        non-finite latency or jitter.
    """

    def __init__(self, channel: Channel, spec: LinkSpec | None, *, seed: int) -> None:
        if spec is not None:
            _check_spec(spec)
        self._channel = channel
        self._spec = spec
        self._rng = random.Random(seed)

        # Submission (sequence number, schedule, enqueue) happens in one
        # order under _submit_lock; the queue has its own condition so that
        # encoding a large frame does not hold up the writer.
        self._submit_lock = threading.Lock()
        self._free_at_s = -math.inf
        self._last_deliver_s = -math.inf
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, float]] = deque()
        self._closing = False
        self._error: Exception | None = None

        self._thread = threading.Thread(
            target=self._write_loop, name=f"link-to-{channel.node}", daemon=True
        )
        self._thread.start()

    @property
    def spec(self) -> LinkSpec | None:
        """The emulated link, ``None`` when unshaped."""
        return self._spec

    def send(
        self,
        kind: MessageKind,
        header: dict[str, Any] | None = None,
        payload: Payload = b"",
    ) -> Transfer:
        """Queue one message on the link and return its schedule at once.

        Raises
        ------
        ProtocolError
            If the header is not JSON metadata, the frame is too large, the
            sender is closed, or an earlier write failed (that error, or a
            :class:`~splitlab.wire.ConnectionClosed` wrapping it).
        """
        submitted_s = time.monotonic()
        with self._submit_lock:
            self._raise_if_failed()
            if self._closing:
                raise ProtocolError(f"link to {self._channel.node!r} is closed")
            frame = self._channel.encode(kind, header, payload)
            transfer = self._schedule(submitted_s, len(frame))
            with self._cond:
                self._queue.append((frame, transfer.deliver_s))
                self._cond.notify_all()
        return transfer

    def flush(self) -> None:
        """Wait until every queued frame is written.

        Raises
        ------
        ProtocolError
            If a write failed.
        """
        with self._cond:
            while self._queue and self._error is None:
                self._cond.wait()
        self._raise_if_failed()

    def close(self) -> None:
        """Write the queued frames, then stop the writer thread.

        Raises
        ------
        ProtocolError
            If a write failed.
        """
        try:
            self.flush()
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join()

    def __enter__(self) -> ShapedSender:
        """Return the sender itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Flush and stop the sender."""
        self.close()

    def _schedule(self, submitted_s: float, size_bytes: int) -> Transfer:
        spec = self._spec
        if spec is None:
            return Transfer(
                size_bytes, submitted_s, submitted_s, submitted_s, submitted_s
            )
        start_s = max(submitted_s, self._free_at_s)
        free_s = start_s + size_bytes * 8 / spec.rate_bps
        deliver_s = max(
            free_s + spec.latency_s + self._jitter_s(spec), self._last_deliver_s
        )
        self._free_at_s = free_s
        self._last_deliver_s = deliver_s
        return Transfer(size_bytes, submitted_s, start_s, free_s, deliver_s)

    def _jitter_s(self, spec: LinkSpec) -> float:
        if spec.jitter_s == 0:
            return 0.0
        # Truncation by rejection: redraw until the latency stays non-negative
        # (at worst half the draws are rejected, when the latency is zero).
        while True:
            jitter_s = self._rng.gauss(0.0, spec.jitter_s)
            if spec.latency_s + jitter_s >= 0:
                return jitter_s

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                frame, deliver_s = self._queue[0]

            try:
                self._write(frame, deliver_s)
            except Exception as err:
                logger.debug("link to %r failed: %s", self._channel.node, err)
                with self._cond:
                    self._error = err
                    self._queue.clear()
                    self._cond.notify_all()
                return

            # Popped only once written, so flush() also waits for this frame.
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def _write(self, frame: bytes, deliver_s: float) -> None:
        spec = self._spec
        if spec is None:
            self._channel.write_frame(frame)
            return

        # Each chunk is released when its last bit would arrive, so the
        # receiver takes in a large frame as the link carries it and has only
        # the last chunk left to read at the delivery instant.
        def pace(end: int) -> None:
            due_s = deliver_s - (len(frame) - end) * 8 / spec.rate_bps
            if end == len(frame):
                _sleep_until(due_s)
            else:
                time.sleep(max(0.0, due_s - time.monotonic()))

        self._channel.write_frame(frame, pace=pace)

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, ProtocolError):
            raise error
        raise ConnectionClosed(
            f"writing to {self._channel.node!r} failed: {error}"
        ) from error


def _check_spec(spec: LinkSpec) -> None:
    if not (math.isfinite(spec.rate_bps) and spec.rate_bps > 0):
        raise ConfigError(f"link rate_bps is {spec.rate_bps}, it must be positive")
    for name, value in (("latency_s", spec.latency_s), ("jitter_s", spec.jitter_s)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"link {name} is {value}, it must be at least 0")


def _sleep_until(deadline_s: float) -> None:
    """Sleep until ``deadline_s`` on the monotonic clock, to well under 1 ms."""
    while True:
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0:
            return
        # sleep(0) yields the interpreter to other threads while spinning.
        time.sleep(remaining_s - SPIN_S if remaining_s > SPIN_S else 0)
