"""The device-to-BS transport against raw TCP: per-message overhead and goodput.

A tensor of 1 kB to 4 MB goes from a "device" (this process) to a "base
station" (a forked process) over loopback TCP, one message at a time as a
task's cut tensor does in a run.  The station notes on the shared monotonic
clock when it holds the whole tensor and sends that instant back, so each
message's one-way time (start of sending to tensor received) is measured on
one clock.  Three paths are timed, interleaved in blocks whose order rotates:

``raw``
    The baseline: an 8-byte length and the same bytes with ``sendall``,
    read with ``recv_into`` into a fresh buffer, answered by the receipt time.
``channel``
    :class:`splitlab.wire.Channel` as the agent uses it (``tensor_header``,
    ``tobytes``, an HMAC-SHA256 framed ``TENSOR``), decoded on the other side
    with ``decode_tensor`` and answered by an authenticated ``ACK`` as the
    station answers.
``sender``
    The same through an unshaped :class:`splitlab.shaping.ShapedSender`
    (its writer thread), which is exactly the agent's path without a link.

Per size it reports the median one-way time of each path, the time a path
adds to raw per message (target: under 200 us) and the goodput (payload
bytes per second of one-way time; target: at least half of raw), beside the time of
one HMAC-SHA256 over the payload, which each end computes once per message.

    .venv/bin/python bench/transport.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from common import load_average, median, print_table, write_results

from splitlab.shaping import ShapedSender
from splitlab.wire import Channel, MessageKind, decode_tensor, tensor_header

SIZES = (1024, 16 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)
# Messages per path and size in quick mode; the full mode sends four times more.
QUICK_MESSAGES = {1024: 1000, 16384: 1000, 262144: 300, 1048576: 100, 4194304: 40}
BLOCK = 4
TARGET_ADDED_US = 200.0
TARGET_GOODPUT_RATIO = 0.5
SECRET = b"bench-transport-secret-32-bytes!"
_LENGTH = struct.Struct(">Q")
_STAMP = struct.Struct(">d")


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        count = sock.recv_into(view[filled:])
        if count == 0:
            raise ConnectionError("peer closed")
        filled += count
    return buffer


def _serve_raw(sock: socket.socket) -> None:
    with sock:
        while True:
            try:
                (size,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
            except ConnectionError:
                return
            _recv_exactly(sock, size)
            sock.sendall(_STAMP.pack(time.monotonic()))


def _serve_channel(channel: Channel) -> None:
    with channel:
        while True:
            try:
                message = channel.recv()
            except ConnectionError:
                return
            decode_tensor(message.header["tensor"], message.payload)
            received_s = time.monotonic()
            channel.send(
                MessageKind.ACK,
                {"key": message.header["task_id"], "received_s": received_s},
            )


def serve(listener: socket.socket) -> None:
    """The BS side: answer the raw connection and the channel until both close."""
    raw, _ = listener.accept()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock, _ = listener.accept()
    channel = Channel.accept(sock, secret=SECRET, timeout_s=10.0)
    thread = threading.Thread(target=_serve_raw, args=(raw,))
    thread.start()
    _serve_channel(channel)
    thread.join()


class Client:
    """The device side: one raw socket and one channel to the server."""

    def __init__(self, port: int) -> None:
        self.raw = socket.create_connection(("127.0.0.1", port))
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.channel = Channel.connect(
            "127.0.0.1", port, secret=SECRET, node="device", timeout_s=10.0
        )
        self.sender = ShapedSender(self.channel, None, seed=1)
        self.task_id = 0

    def raw_one_way(self, payload: bytes) -> float:
        """Send ``payload`` length-prefixed; seconds until the server had it all."""
        started_s = time.monotonic()
        self.raw.sendall(_LENGTH.pack(len(payload)))
        self.raw.sendall(payload)
        (received_s,) = _STAMP.unpack(_recv_exactly(self.raw, _STAMP.size))
        return float(received_s) - started_s

    def _header(self, array: np.ndarray[Any, Any]) -> dict[str, Any]:
        self.task_id += 1
        now = time.time()
        return {
            "task_id": self.task_id,
            "cut": 3,
            "arrival_at": now,
            "started_at": now,
            "finished_at": now,
            "tensor": tensor_header(array),
        }

    def channel_one_way(self, array: np.ndarray[Any, Any]) -> float:
        """Send ``array`` as the agent does, on the channel itself.

        Returns the seconds from the start of encoding until the server had
        decoded the tensor.
        """
        started_s = time.monotonic()
        self.channel.send(MessageKind.TENSOR, self._header(array), array.tobytes())
        return float(self.channel.recv().header["received_s"]) - started_s

    def sender_one_way(self, array: np.ndarray[Any, Any]) -> float:
        """As :meth:`channel_one_way`, through the unshaped sender thread."""
        started_s = time.monotonic()
        self.sender.send(MessageKind.TENSOR, self._header(array), array.tobytes())
        return float(self.channel.recv().header["received_s"]) - started_s

    def close(self) -> None:
        """Close both connections; the server then exits."""
        self.sender.close()
        self.channel.close()
        self.raw.close()


def bench_size(client: Client, size: int, messages: int) -> dict[str, Any]:
    """Time ``messages`` one-way sends per path of a ``size``-byte tensor."""
    array = np.random.default_rng(size).standard_normal(size // 4, dtype=np.float32)
    payload = array.tobytes()
    paths: dict[str, Callable[[], float]] = {
        "raw": lambda: client.raw_one_way(payload),
        "channel": lambda: client.channel_one_way(array),
        "sender": lambda: client.sender_one_way(array),
    }
    order = list(paths)
    for run in paths.values():
        run()
    times_s: dict[str, list[float]] = {path: [] for path in paths}
    for block in range(0, messages, BLOCK):
        shift = (block // BLOCK) % len(order)
        for path in order[shift:] + order[:shift]:
            times_s[path].extend(paths[path]() for _ in range(BLOCK))

    # One HMAC-SHA256 over the payload: each end computes one per message.
    hmac_s = []
    for _ in range(5):
        started_s = time.perf_counter()
        hmac.new(SECRET, payload, hashlib.sha256).digest()
        hmac_s.append(time.perf_counter() - started_s)

    raw_s = median(times_s["raw"])
    row: dict[str, Any] = {
        "size_bytes": size,
        "messages": len(times_s["raw"]),
        "hmac_us": median(hmac_s) * 1e6,
        "raw_us": raw_s * 1e6,
        "raw_goodput_mbps": size * 8 / raw_s / 1e6,
    }
    for path in ("channel", "sender"):
        path_s = median(times_s[path])
        row[f"{path}_us"] = path_s * 1e6
        row[f"{path}_added_us"] = (path_s - raw_s) * 1e6
        row[f"{path}_goodput_mbps"] = size * 8 / path_s / 1e6
        row[f"{path}_goodput_ratio"] = raw_s / path_s
        row[f"{path}_meets_added"] = row[f"{path}_added_us"] < TARGET_ADDED_US
        row[f"{path}_meets_goodput"] = (
            row[f"{path}_goodput_ratio"] >= TARGET_GOODPUT_RATIO
        )
    return row


def main() -> None:
    """Run the bench, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    args = parser.parse_args()
    scale = 4 if args.full else 1
    started_load = load_average()[0]

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(listener,), daemon=True
    )
    server.start()
    listener.close()
    client = Client(port)
    try:
        rows = [
            bench_size(client, size, QUICK_MESSAGES[size] * scale) for size in SIZES
        ]
    finally:
        client.close()
        server.join(timeout=10)

    print(
        "one-way time of one tensor over loopback (sent to decoded, one clock);"
        f" targets: added < {TARGET_ADDED_US:.0f} us, goodput >= "
        f"{TARGET_GOODPUT_RATIO:.0%} of raw"
    )
    print_table(
        ["bytes", "msgs", "raw us", "chan us", "added", "ratio", "sender us",
         "added", "ratio", "raw Mb/s", "sender Mb/s", "1 hmac us", "ok add/gp"],
        [
            [
                row["size_bytes"], row["messages"], row["raw_us"],
                row["channel_us"], row["channel_added_us"],
                row["channel_goodput_ratio"], row["sender_us"],
                row["sender_added_us"], row["sender_goodput_ratio"],
                row["raw_goodput_mbps"], row["sender_goodput_mbps"],
                row["hmac_us"],
                "/".join(
                    "yes" if row[f"sender_meets_{target}"] else "NO"
                    for target in ("added", "goodput")
                ),
            ]
            for row in rows
        ],
    )  # fmt: skip
    write_results(
        "transport",
        {
            "target_added_us": TARGET_ADDED_US,
            "target_goodput_ratio": TARGET_GOODPUT_RATIO,
            "rows": rows,
        },
        started_load=started_load,
    )


if __name__ == "__main__":
    main()
