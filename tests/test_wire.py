"""Tests of the authenticated wire protocol over real sockets."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitlab.errors import ConfigError, ProtocolError
from splitlab.wire import (
    ALLOWED_DTYPES,
    MAGIC,
    PREFIX_BYTES,
    PROTOCOL_VERSION,
    TAG_BYTES,
    WRITE_CHUNK_BYTES,
    Channel,
    ConnectionClosed,
    MessageKind,
    decode_tensor,
    parse_prefix,
    tensor_header,
    tensor_payload,
)

SECRET = b"splitlab-test-secret-0123456789"
SESSION_KEY = b"k" * 32


def handshake(
    *,
    client_secret: bytes = SECRET,
    server_secret: bytes = SECRET,
    node: str = "dev0",
) -> tuple[Channel | Exception, Channel | Exception]:
    """Open a TCP connection on loopback and run both ends of the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server: list[Channel | Exception] = []

    def serve() -> None:
        sock, _ = listener.accept()
        try:
            server.append(Channel.accept(sock, secret=server_secret, timeout_s=5))
        except Exception as err:
            server.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    client: Channel | Exception
    try:
        client = Channel.connect(
            "127.0.0.1", port, secret=client_secret, node=node, timeout_s=5
        )
    except Exception as err:
        client = err
    thread.join(5)
    listener.close()
    return client, server[0]


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Channel, Channel]]:
    client, server = handshake()
    assert isinstance(client, Channel) and isinstance(server, Channel)
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def raw_pair() -> Iterator[tuple[socket.socket, Channel, Channel]]:
    """A BS-side sender and a device-side receiver over a socketpair.

    The raw socket of the sender is returned so that tests can write forged
    bytes to the receiver.
    """
    left, right = socket.socketpair()
    sender = Channel(left, session_key=SESSION_KEY, node="dev0", side="server")
    receiver = Channel(
        right,
        session_key=SESSION_KEY,
        node="bs",
        side="client",
        max_frame_bytes=1 << 20,
    )
    yield left, sender, receiver
    sender.close()
    receiver.close()


# -- handshake -----------------------------------------------------------


def test_handshake_authenticates_both_ends(
    tcp_pair: tuple[Channel, Channel],
) -> None:
    client, server = tcp_pair
    assert server.node == "dev0"
    assert client.node == "bs"

    header = {"task_id": 7, "name": "cut é", "nested": {"a": [1, 2.5, "x"]}}
    written = client.send(MessageKind.HELLO, header, b"\x00\x01\x02")
    message = server.recv(timeout_s=5)
    assert message.kind is MessageKind.HELLO
    assert message.header == header
    assert bytes(message.payload) == b"\x00\x01\x02"
    compact = '{"task_id":7,"name":"cut é","nested":{"a":[1,2.5,"x"]}}'
    assert written == PREFIX_BYTES + len(compact.encode()) + 3 + TAG_BYTES

    server.send(MessageKind.WELCOME, {"ok": True})
    answer = client.recv(timeout_s=5)
    assert answer.kind is MessageKind.WELCOME
    assert answer.header == {"ok": True}
    assert bytes(answer.payload) == b""


def test_wrong_secret_is_refused_on_both_ends() -> None:
    client, server = handshake(client_secret=b"x" * 32)
    assert isinstance(server, ProtocolError)
    assert "'dev0'" in str(server)
    assert "failed authentication" in str(server)
    assert isinstance(client, ProtocolError)
    assert "refused the handshake" in str(client)
    assert "failed authentication" in str(client)


def test_short_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="4 bytes, at least 16"):
        Channel.connect("127.0.0.1", 9, secret=b"abcd", node="dev0", timeout_s=1)


def test_silent_client_times_out_the_handshake() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    quiet = socket.create_connection(listener.getsockname())
    sock, _ = listener.accept()
    started_s = time.monotonic()
    with pytest.raises(ProtocolError, match=r"did not complete within 0\.3 s"):
        Channel.accept(sock, secret=SECRET, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started_s < 1.0
    quiet.close()
    listener.close()


def test_client_refuses_a_server_that_is_not_splitlab() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        sock, _ = listener.accept()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    with pytest.raises(ProtocolError, match="starts with b'HTTP"):
        Channel.connect("127.0.0.1", port, secret=SECRET, node="d", timeout_s=2)
    thread.join()
    listener.close()


# -- frames --------------------------------------------------------------


def test_frames_keep_their_order_under_concurrent_senders(
    tcp_pair: tuple[Channel, Channel],
) -> None:
    client, server = tcp_pair

    def send_many(worker: int) -> None:
        for index in range(50):
            client.send(MessageKind.REPORT, {"worker": worker, "index": index})

    threads = [threading.Thread(target=send_many, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: [], 3: []}
    for _ in range(200):
        header = server.recv(timeout_s=5).header
        seen[header["worker"]].append(header["index"])
    for thread in threads:
        thread.join()
    assert seen == {worker: list(range(50)) for worker in range(4)}


@pytest.mark.parametrize(
    ("where", "offset"),
    [("kind", 5), ("header", PREFIX_BYTES + 3), ("payload", -TAG_BYTES - 10)],
)
def test_tampered_frame_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel], where: str, offset: int
) -> None:
    raw, sender, receiver = raw_pair
    frame = bytearray(sender.encode(MessageKind.TENSOR, {"task": 1}, b"a" * 100))
    frame[offset] ^= 0x01
    raw.sendall(frame)
    with pytest.raises(ProtocolError, match=r"frame 0 .* bad authentication tag"):
        receiver.recv(timeout_s=2)
    # A refused frame leaves the channel unusable, whatever follows.
    with pytest.raises(ProtocolError, match="unusable after an earlier error"):
        receiver.recv(timeout_s=2)


def test_tampered_tag_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    frame = bytearray(sender.encode(MessageKind.DONE))
    frame[-1] ^= 0x80
    raw.sendall(frame)
    with pytest.raises(ProtocolError, match=r"DONE frame 0 .* bad authentication tag"):
        receiver.recv(timeout_s=2)


def test_replayed_frame_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    frame = sender.encode(MessageKind.PLAN, {"cut": 3})
    raw.sendall(frame)
    assert receiver.recv(timeout_s=2).header == {"cut": 3}
    raw.sendall(frame)
    with pytest.raises(ProtocolError, match="replayed: sequence 0, expected 1"):
        receiver.recv(timeout_s=2)


def test_skipped_frame_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    sender.encode(MessageKind.PLAN, {"cut": 3})
    raw.sendall(sender.encode(MessageKind.PLAN, {"cut": 4}))
    with pytest.raises(ProtocolError, match="out of order: sequence 1, expected 0"):
        receiver.recv(timeout_s=2)


def test_reflected_frame_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, _, receiver = raw_pair
    # The receiver's own first frame, sent back to it: same key, same
    # sequence number, only the direction differs.
    frame = receiver.encode(MessageKind.RESULT, {"task": 1})
    raw.sendall(frame)
    with pytest.raises(ProtocolError, match=r"RESULT frame 0 .* bad authentication"):
        receiver.recv(timeout_s=2)


def test_frame_of_another_version_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    frame = bytearray(sender.encode(MessageKind.HELLO))
    frame[4] = PROTOCOL_VERSION + 1
    raw.sendall(frame)
    with pytest.raises(ProtocolError, match="protocol version 2, this side speaks 1"):
        receiver.recv(timeout_s=2)


def test_oversized_frame_is_refused_before_its_body(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, _, receiver = raw_pair
    declared = 100 * 1024 * 1024
    # Only the prefix is sent: the receiver must refuse without waiting.
    raw.sendall(
        struct.pack(
            ">4sBBQII", MAGIC, PROTOCOL_VERSION, MessageKind.TENSOR, 0, 2, declared
        )
    )
    started_s = time.monotonic()
    with pytest.raises(ProtocolError) as caught:
        receiver.recv(timeout_s=5)
    assert time.monotonic() - started_s < 1.0
    assert f"payload {declared}" in str(caught.value)
    assert f"above the limit of {1 << 20} bytes" in str(caught.value)


def test_sender_refuses_an_oversized_frame(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    _, _, receiver = raw_pair  # its limit is 1 MiB
    with pytest.raises(ProtocolError, match="above the limit of 1048576 bytes"):
        receiver.send(MessageKind.TENSOR, {}, bytes(1 << 20))


def test_truncated_frame_is_refused(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    frame = sender.encode(MessageKind.TENSOR, {"task": 1}, bytes(1000))
    raw.sendall(frame[:500])
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed, match=f"500 of the {len(frame)} bytes"):
        receiver.recv(timeout_s=2)


def test_clean_close_between_frames(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    sender.send(MessageKind.BYE)
    raw.shutdown(socket.SHUT_WR)
    assert receiver.recv(timeout_s=2).kind is MessageKind.BYE
    with pytest.raises(ConnectionClosed) as caught:
        receiver.recv(timeout_s=2)
    assert "truncated" not in str(caught.value)
    assert isinstance(caught.value, ProtocolError)
    assert isinstance(caught.value, ConnectionError)
    with pytest.raises(ConnectionClosed, match="unusable after an earlier error"):
        receiver.recv(timeout_s=2)


def test_timeout_keeps_a_partial_frame(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    raw, sender, receiver = raw_pair
    frame = sender.encode(MessageKind.TENSOR, {"task": 5}, b"xyz" * 100)
    raw.sendall(frame[:40])
    started_s = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        receiver.recv(timeout_s=0.2)
    assert 0.2 <= time.monotonic() - started_s < 0.5
    raw.sendall(frame[40:])
    message = receiver.recv(timeout_s=2)
    assert message.header == {"task": 5}
    assert bytes(message.payload) == b"xyz" * 100


def test_close_wakes_a_blocked_reader(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    _, _, receiver = raw_pair
    errors: list[Exception] = []

    def read() -> None:
        try:
            receiver.recv()
        except Exception as err:
            errors.append(err)

    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(0.05)
    receiver.close()
    thread.join(2)
    assert not thread.is_alive()
    assert isinstance(errors[0], ConnectionClosed)


def test_write_frame_refuses_frames_out_of_encoding_order(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    _, sender, _ = raw_pair
    first = sender.encode(MessageKind.HELLO)
    second = sender.encode(MessageKind.HELLO)
    with pytest.raises(ProtocolError, match=r"frame 1 .* next frame to write is 0"):
        sender.write_frame(second)
    assert sender.write_frame(first) == len(first)


def test_paced_write_is_chunked_and_complete(
    raw_pair: tuple[socket.socket, Channel, Channel],
) -> None:
    _, sender, receiver = raw_pair
    payload = bytes(range(256)) * 1000
    frame = sender.encode(MessageKind.TENSOR, {"task": 2}, payload)
    ends: list[int] = []
    thread = threading.Thread(
        target=sender.write_frame, args=(frame,), kwargs={"pace": ends.append}
    )
    thread.start()
    message = receiver.recv(timeout_s=5)
    thread.join()
    assert ends == [
        *range(WRITE_CHUNK_BYTES, len(frame), WRITE_CHUNK_BYTES),
        len(frame),
    ]
    assert bytes(message.payload) == payload


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"blob": b"raw"}, "not JSON serializable"),
        ({"value": float("nan")}, "Out of range float"),
    ],
)
def test_header_must_be_json_metadata(
    raw_pair: tuple[socket.socket, Channel, Channel],
    header: dict[str, Any],
    match: str,
) -> None:
    _, sender, _ = raw_pair
    with pytest.raises(ProtocolError, match=match):
        sender.send(MessageKind.REPORT, header)


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (b"SPLB\x01\x06", "prefix has 6 bytes, expected 22"),
        (b"XXXX" + bytes(18), r"starts with b'XXXX', expected b'SPLB'"),
        (struct.pack(">4sBBQII", MAGIC, 1, 200, 0, 2, 0), "unknown message kind 200"),
        (struct.pack(">4sBBQII", MAGIC, 1, 6, 0, 0, 0), "header of 0 bytes"),
        (struct.pack(">4sBBQII", MAGIC, 1, 6, 0, 2, 10_000), "declares 10056 bytes"),
    ],
)
def test_parse_prefix_refuses_bad_prefixes(prefix: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_prefix(prefix, max_frame_bytes=10_000)


# -- tensors -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
@pytest.mark.parametrize("shape", [(), (0, 4), (3,), (2, 3, 5)])
def test_tensors_round_trip(
    tcp_pair: tuple[Channel, Channel], dtype: str, shape: tuple[int, ...]
) -> None:
    client, server = tcp_pair
    rng = np.random.default_rng(len(shape))
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    client.send(
        MessageKind.TENSOR,
        {**tensor_header(array), "task_id": 9},
        tensor_payload(array),
    )
    message = server.recv(timeout_s=5)
    assert message.header["task_id"] == 9
    received = decode_tensor(message.header, message.payload)
    assert received.dtype == np.dtype(dtype)
    assert received.shape == shape
    np.testing.assert_array_equal(received, array)


def test_decoded_tensor_shares_the_payload() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    payload = bytearray(tensor_payload(array))
    received = decode_tensor(tensor_header(array), payload)
    assert received.flags.writeable
    payload[0] = 99  # the first element's low byte, little-endian
    assert received[0, 0] == 99


def test_tensor_payload_is_c_order_little_endian() -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3).T
    assert tensor_header(array) == {"dtype": "int32", "shape": [3, 2]}
    expected = np.ascontiguousarray(array).astype("<i4").tobytes()
    assert bytes(tensor_payload(array)) == expected


@pytest.mark.parametrize(
    ("header", "size", "match"),
    [
        (
            {"dtype": "float32", "shape": [2, 3]},
            20,
            "needs 24 bytes, the payload has 20",
        ),
        ({"dtype": "float64", "shape": [2]}, 16, "'float64' may not cross the wire"),
        ({"dtype": "object", "shape": [1]}, 8, "'object' may not cross the wire"),
        ({"dtype": 5, "shape": [1]}, 4, "dtype 5, not a name"),
        ({"dtype": "int8", "shape": [-1]}, 1, "non-negative integers"),
        ({"dtype": "int8", "shape": [True]}, 1, "non-negative integers"),
        ({"dtype": "int8", "shape": "4"}, 4, "non-negative integers"),
        ({"dtype": "int8"}, 4, "shape None"),
        ({"dtype": "int8", "shape": [1] * 33}, 1, "at most 32"),
    ],
)
def test_bad_tensor_is_refused(header: dict[str, Any], size: int, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_tensor(header, bytes(size))


def test_tensor_header_refuses_a_dtype_outside_the_allowlist() -> None:
    with pytest.raises(ProtocolError, match="'float64' may not cross the wire"):
        tensor_header(np.zeros(3))


# -- fuzzing -------------------------------------------------------------


def _valid_frames() -> bytes:
    left, right = socket.socketpair()
    sender = Channel(left, session_key=SESSION_KEY, node="dev0", side="server")
    frames = sender.encode(MessageKind.HELLO, {"a": 1}) + sender.encode(
        MessageKind.TENSOR, {"dtype": "uint8", "shape": [4]}, b"\x01\x02\x03\x04"
    )
    sender.close()
    right.close()
    return frames


VALID = _valid_frames()

garbage = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda tail: MAGIC + bytes([PROTOCOL_VERSION]) + tail),
    st.tuples(
        st.integers(0, len(VALID) - 1), st.integers(1, 255), st.integers(0, len(VALID))
    ).map(
        lambda edit: (
            VALID[: edit[0]] + bytes([VALID[edit[0]] ^ edit[1]]) + VALID[edit[0] + 1 :]
        )[: edit[2]]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage)
def test_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    left, right = socket.socketpair()
    receiver = Channel(
        right,
        session_key=SESSION_KEY,
        node="bs",
        side="client",
        max_frame_bytes=1 << 16,
    )
    left.sendall(data)
    left.shutdown(socket.SHUT_WR)
    started_s = time.monotonic()
    try:
        for _ in range(3):
            receiver.recv(timeout_s=2)
        pytest.fail("three messages from at most two frames")
    except ProtocolError:
        pass
    finally:
        left.close()
        receiver.close()
    assert time.monotonic() - started_s < 1.0
