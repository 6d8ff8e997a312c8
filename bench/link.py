"""The emulated link: configured against measured one-way time and rate.

A "device" (this process) sends tensors through a
:class:`splitlab.shaping.ShapedSender` over a :class:`splitlab.wire.Channel`
on loopback to a "base station" (a forked process), which notes on the
shared monotonic clock when it holds each whole frame and sends that instant
back.  For a few latency/rate pairs (the default scenario's four links and a
fast one):

- one-way time: frames of several sizes sent one at a time on an idle link;
  measured = receipt - submission, configured = ``LinkSpec.transfer_s`` of
  the whole frame (latency + 8 * bytes / rate);
- rate: a burst of frames sent back to back; measured = 8 * bytes of frames
  2..M / (receipt of the last - receipt of the first), configured = rate.

Each row prints both and the relative error (measured - configured) /
configured; the configured value is the baseline, computed, not timed.

    .venv/bin/python bench/link.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import time
from typing import Any

import numpy as np
from common import load_average, median, print_table, write_results

from splitlab.link import LinkSpec
from splitlab.shaping import ShapedSender
from splitlab.wire import Channel, MessageKind, decode_tensor, tensor_header

# (latency ms, rate Mbit/s): the default scenario's links and a fast one.
LINKS = ((1.0, 100.0), (5.0, 50.0), (20.0, 20.0), (50.0, 10.0), (100.0, 5.0))
SIZES = (1024, 16 * 1024, 64 * 1024, 256 * 1024)
BURST_BYTES = 64 * 1024
SECRET = b"bench-link-secret-of-32-bytes!!!"


def serve(listener: socket.socket) -> None:
    """The BS side: answer every frame with the instant it was received."""
    sock, _ = listener.accept()
    with Channel.accept(sock, secret=SECRET, timeout_s=10.0) as channel:
        while True:
            try:
                message = channel.recv()
            except ConnectionError:
                return
            received_s = time.monotonic()
            decode_tensor(message.header["tensor"], message.payload)
            channel.send(MessageKind.ACK, {"received_s": received_s})


def _tensor(size: int) -> tuple[dict[str, Any], bytes]:
    array = np.zeros(size // 4, dtype=np.float32)
    return {"tensor": tensor_header(array)}, array.tobytes()


def bench_link(
    channel: Channel, spec: LinkSpec, *, repeats: int, burst: int
) -> list[dict[str, Any]]:
    """Measure one link: one-way time per size, then the rate of a burst."""
    rows: list[dict[str, Any]] = []
    with ShapedSender(channel, spec, seed=1) as sender:
        for size in SIZES:
            header, payload = _tensor(size)
            measured_s = []
            frame_bytes = 0
            for _ in range(repeats):
                transfer = sender.send(MessageKind.TENSOR, header, payload)
                received_s = float(channel.recv().header["received_s"])
                measured_s.append(received_s - transfer.submitted_s)
                frame_bytes = transfer.size_bytes
            configured_s = spec.transfer_s(frame_bytes)
            one_way_s = median(measured_s)
            rows.append(
                {
                    "what": "one-way",
                    "latency_ms": spec.latency_s * 1e3,
                    "rate_mbps": spec.rate_bps / 1e6,
                    "size_bytes": frame_bytes,
                    "samples": repeats,
                    "configured": configured_s * 1e3,
                    "measured": one_way_s * 1e3,
                    "unit": "ms",
                    "difference": (one_way_s - configured_s) * 1e3,
                    "relative_error": (one_way_s - configured_s) / configured_s,
                }
            )

        header, payload = _tensor(BURST_BYTES)
        transfers = [
            sender.send(MessageKind.TENSOR, header, payload) for _ in range(burst)
        ]
        receipts_s = [float(channel.recv().header["received_s"]) for _ in range(burst)]
    carried_bits = 8 * sum(transfer.size_bytes for transfer in transfers[1:])
    rate_bps = carried_bits / (receipts_s[-1] - receipts_s[0])
    rows.append(
        {
            "what": "rate",
            "latency_ms": spec.latency_s * 1e3,
            "rate_mbps": spec.rate_bps / 1e6,
            "size_bytes": transfers[0].size_bytes,
            "samples": burst,
            "configured": spec.rate_bps / 1e6,
            "measured": rate_bps / 1e6,
            "unit": "Mbit/s",
            "difference": (rate_bps - spec.rate_bps) / 1e6,
            "relative_error": (rate_bps - spec.rate_bps) / spec.rate_bps,
        }
    )
    return rows


def main() -> None:
    """Run the bench, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 sends per size")
    mode.add_argument("--full", action="store_true", help="15 sends per size")
    args = parser.parse_args()
    repeats, burst = (15, 24) if args.full else (3, 8) if args.quick else (7, 12)
    started_load = load_average()[0]

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(listener,), daemon=True
    )
    server.start()
    listener.close()
    rows: list[dict[str, Any]] = []
    with Channel.connect(
        "127.0.0.1", port, secret=SECRET, node="device", timeout_s=10.0
    ) as channel:
        for latency_ms, rate_mbps in LINKS:
            spec = LinkSpec(latency_s=latency_ms / 1e3, rate_bps=rate_mbps * 1e6)
            rows.extend(bench_link(channel, spec, repeats=repeats, burst=burst))
    server.join(timeout=10)

    print("emulated link (ShapedSender over loopback): configured against measured")
    print_table(
        ["link", "what", "frame bytes", "n", "configured", "measured", "unit",
         "difference", "rel. error"],
        [
            [
                f"{row['latency_ms']:g} ms {row['rate_mbps']:g} Mb/s", row["what"],
                row["size_bytes"], row["samples"], row["configured"],
                row["measured"], row["unit"], f"{row['difference']:+.3f}",
                f"{row['relative_error']:+.2%}",
            ]
            for row in rows
        ],
    )  # fmt: skip
    errors = [abs(row["relative_error"]) for row in rows]
    print(f"largest |relative error| {max(errors):.2%}, median {median(errors):.2%}")
    write_results(
        "link",
        {
            "repeats": repeats,
            "burst": burst,
            "max_abs_relative_error": max(errors),
            "median_abs_relative_error": median(errors),
            "rows": rows,
        },
        started_load=started_load,
    )


if __name__ == "__main__":
    main()
