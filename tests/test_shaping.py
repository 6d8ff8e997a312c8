"""Tests of the link emulation over a real loopback TCP connection."""

from __future__ import annotations

import itertools
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from splitlab.errors import ConfigError, ProtocolError
from splitlab.link import LinkSpec
from splitlab.shaping import ShapedSender, Transfer
from splitlab.wire import WRITE_CHUNK_BYTES, Channel, ConnectionClosed, MessageKind

SECRET = b"splitlab-test-secret-0123456789"


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Channel, Channel]]:
    """A device channel and the BS channel it is connected to, on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server: list[Channel] = []

    def serve() -> None:
        sock, _ = listener.accept()
        server.append(Channel.accept(sock, secret=SECRET, timeout_s=5))

    thread = threading.Thread(target=serve)
    thread.start()
    client = Channel.connect("127.0.0.1", port, secret=SECRET, node="dev0", timeout_s=5)
    thread.join(5)
    listener.close()
    yield client, server[0]
    client.close()
    server[0].close()


def one_way_s(
    sender: ShapedSender, receiver: Channel, size_bytes: int
) -> tuple[float, Transfer]:
    """Time from send() on one end to recv() returning on the other."""
    payload = bytes(size_bytes)
    started_s = time.monotonic()
    transfer = sender.send(MessageKind.TENSOR, {"size": size_bytes}, payload)
    message = receiver.recv(timeout_s=10)
    elapsed_s = time.monotonic() - started_s
    assert len(message.payload) == size_bytes
    return elapsed_s, transfer


@pytest.mark.parametrize("rate_bps", [50e6, 200e6])
@pytest.mark.parametrize("size_bytes", [1_000, 10_000, 100_000, 1_000_000])
def test_one_way_time_is_latency_plus_size_over_rate(
    tcp_pair: tuple[Channel, Channel], rate_bps: float, size_bytes: int
) -> None:
    client, server = tcp_pair
    spec = LinkSpec(latency_s=0.020, rate_bps=rate_bps)
    with ShapedSender(client, spec, seed=1) as sender:
        samples = [one_way_s(sender, server, size_bytes) for _ in range(5)]
    # The best of five: a busy machine can only make a message late, while an
    # emulation error would show in every repeat.
    measured_s = min(elapsed for elapsed, _ in samples)
    frame_bytes = samples[0][1].size_bytes
    assert size_bytes < frame_bytes < size_bytes + 100
    expected_s = spec.transfer_s(frame_bytes)
    assert measured_s == pytest.approx(expected_s, rel=0.05)


def test_back_to_back_messages_queue_on_the_link(
    tcp_pair: tuple[Channel, Channel],
) -> None:
    client, server = tcp_pair
    spec = LinkSpec(latency_s=0.010, rate_bps=50e6)
    gaps_s: list[float] = []
    totals_s: list[float] = []
    with ShapedSender(client, spec, seed=1) as sender:
        for _ in range(3):
            first = sender.send(MessageKind.TENSOR, {"i": 0}, bytes(200_000))
            second = sender.send(MessageKind.TENSOR, {"i": 1}, bytes(200_000))
            server.recv(timeout_s=5)
            first_arrival_s = time.monotonic()
            server.recv(timeout_s=5)
            second_arrival_s = time.monotonic()
            gaps_s.append(second_arrival_s - first_arrival_s)
            totals_s.append(second_arrival_s - first.submitted_s)

            transmission_s = second.size_bytes * 8 / spec.rate_bps  # 32 ms
            assert first.queued_s == 0
            assert second.start_s == first.free_s
            assert 0 < second.queued_s <= transmission_s
            assert second.deliver_s - first.deliver_s == pytest.approx(transmission_s)

    assert statistics.median(gaps_s) == pytest.approx(transmission_s, rel=0.05)
    assert statistics.median(totals_s) == pytest.approx(
        spec.latency_s + 2 * transmission_s, rel=0.05
    )


def test_jitter_has_the_configured_spread(
    tcp_pair: tuple[Channel, Channel],
) -> None:
    client, server = tcp_pair
    spec = LinkSpec(latency_s=0.015, rate_bps=100e6, jitter_s=0.004)
    drawn_s: list[float] = []
    offsets_s: list[float] = []
    late_s: list[float] = []
    with ShapedSender(client, spec, seed=7) as sender:
        # Gaps of 25 ms keep the FIFO rule from clipping the jitter.
        for index in range(60):
            started_s = time.monotonic()
            transfer = sender.send(MessageKind.TENSOR, {"i": index}, bytes(1000))
            message = server.recv(timeout_s=5)
            arrived_s = time.monotonic()
            assert message.header == {"i": index}
            drawn_s.append(transfer.deliver_s - transfer.free_s - spec.latency_s)
            offsets_s.append(
                arrived_s - started_s - spec.transfer_s(transfer.size_bytes)
            )
            late_s.append(arrived_s - transfer.deliver_s)
            time.sleep(max(0.0, started_s + 0.025 - time.monotonic()))

    # The schedule's jitter is the seeded normal draw.
    assert statistics.stdev(drawn_s) == pytest.approx(spec.jitter_s, rel=0.2)
    assert abs(statistics.mean(drawn_s)) < 0.0015
    # The measured delays spread alike; the quartiles keep an odd frame that
    # a loaded machine read late from swaying the estimate.
    quartiles_s = statistics.quantiles(offsets_s, n=4)
    spread_s = (quartiles_s[2] - quartiles_s[0]) / 1.349
    assert spread_s == pytest.approx(spec.jitter_s, rel=0.3)
    # Frames are written at their scheduled instant, never early.
    assert min(late_s) >= 0
    assert statistics.median(late_s) < 0.001


def test_jitter_never_reorders(tcp_pair: tuple[Channel, Channel]) -> None:
    client, server = tcp_pair
    # Jitter far above the 1 ms between frames would reorder them on a
    # datagram link; a stream must keep them in order.
    spec = LinkSpec(latency_s=0.010, rate_bps=100e6, jitter_s=0.010)
    with ShapedSender(client, spec, seed=3) as sender:
        transfers = []
        for index in range(40):
            transfers.append(sender.send(MessageKind.RESULT, {"i": index}))
            time.sleep(0.001)
        received = [server.recv(timeout_s=5).header["i"] for _ in range(40)]

    assert received == list(range(40))
    delivers_s = [transfer.deliver_s for transfer in transfers]
    assert delivers_s == sorted(delivers_s)
    # Some frames were held back behind an earlier, later-drawn delivery.
    held = sum(1 for a, b in itertools.pairwise(delivers_s) if a == b)
    assert held >= 5
    # Truncation: no frame is delivered before it has left the link.
    assert all(t.deliver_s >= t.free_s for t in transfers)


def test_large_frame_streams_at_the_link_rate() -> None:
    left, right = socket.socketpair()
    channel = Channel(left, session_key=b"k" * 32, node="bs", side="client")
    spec = LinkSpec(latency_s=0.010, rate_bps=50e6)
    with ShapedSender(channel, spec, seed=0) as sender:
        transfer = sender.send(MessageKind.TENSOR, {}, bytes(1_000_000))
        right.recv(1)
        first_byte_s = time.monotonic()
        received = 1
        while received < transfer.size_bytes:
            received += len(right.recv(1 << 20))
        last_byte_s = time.monotonic()
    channel.close()
    right.close()

    # The first chunk arrives once its bits have crossed, long before the
    # whole frame; the last byte arrives at the delivery instant.
    first_chunk_s = spec.latency_s + WRITE_CHUNK_BYTES * 8 / spec.rate_bps
    assert first_byte_s - transfer.submitted_s == pytest.approx(first_chunk_s, rel=0.1)
    assert last_byte_s - transfer.deliver_s == pytest.approx(0.0, abs=0.002)
    assert transfer.deliver_s - transfer.submitted_s == pytest.approx(
        spec.transfer_s(transfer.size_bytes)
    )


def test_same_seed_gives_the_same_jitter() -> None:
    # Frames 4.5 ms apart on the link: a 0.5 ms jitter never has to be
    # clipped to keep them in order, so each delay is the drawn jitter.
    spec = LinkSpec(latency_s=0.0, rate_bps=1e5, jitter_s=0.0005)
    draws = []
    for _ in range(2):
        left, right = socket.socketpair()
        channel = Channel(left, session_key=b"k" * 32, node="bs", side="client")
        with ShapedSender(channel, spec, seed=11) as sender:
            transfers = [sender.send(MessageKind.PING) for _ in range(5)]
        draws.append([t.deliver_s - t.free_s for t in transfers])
        channel.close()
        right.close()
    assert draws[0] == pytest.approx(draws[1], abs=1e-9)
    assert all(draw >= 0 for draw in draws[0])  # latency + jitter never < 0
    assert len(set(draws[0])) > 1


def test_unshaped_sender_writes_at_once(tcp_pair: tuple[Channel, Channel]) -> None:
    client, server = tcp_pair
    with ShapedSender(client, None, seed=0) as sender:
        elapsed_s, transfer = one_way_s(sender, server, 100_000)
    assert transfer.deliver_s == transfer.submitted_s
    assert elapsed_s < 0.01


def test_close_flushes_pending_frames(tcp_pair: tuple[Channel, Channel]) -> None:
    client, server = tcp_pair
    sender = ShapedSender(client, LinkSpec(latency_s=0.05, rate_bps=10e6), seed=0)
    transfers = [
        sender.send(MessageKind.REPORT, {"i": i}, bytes(10_000)) for i in range(5)
    ]
    sender.close()
    assert time.monotonic() >= transfers[-1].deliver_s
    assert [server.recv(timeout_s=1).header["i"] for _ in range(5)] == list(range(5))
    with pytest.raises(ProtocolError, match="link to 'bs' is closed"):
        sender.send(MessageKind.REPORT)


def test_writer_error_is_raised_on_the_next_call(
    tcp_pair: tuple[Channel, Channel],
) -> None:
    client, _ = tcp_pair
    sender = ShapedSender(client, LinkSpec(latency_s=0.05, rate_bps=10e6), seed=0)
    sender.send(MessageKind.REPORT, {"i": 0})
    client.close()
    with pytest.raises(ConnectionClosed, match=r"'bs' at 127\.0\.0\.1:\d+ is closed"):
        sender.flush()
    with pytest.raises(ConnectionClosed):
        sender.send(MessageKind.REPORT, {"i": 1})
    with pytest.raises(ConnectionClosed):
        sender.close()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (LinkSpec(latency_s=0.01, rate_bps=0), "rate_bps is 0, it must be positive"),
        (LinkSpec(latency_s=-0.01, rate_bps=1e6), "latency_s is -0.01"),
        (
            LinkSpec(latency_s=0.01, rate_bps=1e6, jitter_s=float("nan")),
            "jitter_s is nan",
        ),
    ],
)
def test_invalid_link_is_a_config_error(spec: LinkSpec, match: str) -> None:
    left, right = socket.socketpair()
    channel = Channel(left, session_key=b"k" * 32, node="bs", side="client")
    with pytest.raises(ConfigError, match=match):
        ShapedSender(channel, spec, seed=0)
    channel.close()
    right.close()
