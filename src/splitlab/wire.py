"""The authenticated wire protocol between device agents and the base station.

Every message travels as one frame::

    prefix   22 bytes  magic b"SPLB", version u8, kind u8, sequence u64,
                       header length u32, payload length u32 (big-endian)
    header   JSON object, UTF-8 (metadata: strings, numbers, lists, objects)
    payload  raw bytes (a tensor's memory, or nothing)
    tag      32 bytes  HMAC-SHA256(key, direction byte + sequence + frame)

A :class:`Channel` wraps one TCP connection.  Opening it runs a mutual
challenge-response handshake over a per-run secret: the base station sends a
nonce, the device answers with its own nonce, its node name and a proof that
it knows the secret, and the base station answers with its proof.  Both sides
then derive a session key from the secret and both nonces.  Each frame's tag
covers the direction of travel and a per-direction sequence number, so a
frame cannot be replayed, reordered, reflected back or carried into another
session.  Declared lengths are checked before a frame's body is read, so a
peer cannot make the other side allocate more than ``max_frame_bytes``.

Nothing is ever pickled: tensors cross as their raw little-endian bytes with
a header naming an allowed dtype and the shape (:func:`tensor_header`,
:func:`tensor_payload`, :func:`decode_tensor`).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import json
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, NoReturn

import numpy as np
import numpy.typing as npt

from splitlab.errors import ConfigError, ProtocolError

logger = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
"""The version this side speaks; a frame of any other version is refused."""

MAGIC: Final = b"SPLB"
"""The first four bytes of every frame."""

MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
"""Default limit on a whole frame (prefix, header, payload and tag), in bytes."""

MAX_HEADER_BYTES: Final = 1024 * 1024
"""Limit on a frame's JSON header, in bytes."""

HANDSHAKE_MAX_FRAME_BYTES: Final = 4096
"""Limit on a frame before the peer is authenticated, in bytes."""

TAG_BYTES: Final = 32
"""Bytes of the HMAC-SHA256 tag that ends every frame."""

WRITE_CHUNK_BYTES: Final = 64 * 1024
"""Bytes per write when a frame is written paced (see :meth:`Channel.write_frame`)."""

MIN_SECRET_BYTES: Final = 16
"""The shortest per-run secret accepted, in bytes."""

MAX_NODE_NAME_CHARS: Final = 128
"""The longest node name a peer may announce."""

ALLOWED_DTYPES: Final = ("float32", "float16", "int64", "int32", "uint8", "int8")
"""Tensor element types that may cross the wire."""

MAX_TENSOR_DIMS: Final = 32
"""The most dimensions a tensor on the wire may have."""

_PREFIX = struct.Struct(">4sBBQII")
PREFIX_BYTES: Final = _PREFIX.size
"""Bytes of the fixed prefix that starts every frame."""

_NONCE_BYTES = 32
_SEQ_OFFSET = 6  # where the sequence number sits in the prefix
# Polling in slices lets a reader blocked without a deadline notice close().
_POLL_SLICE_S = 0.5

Side = Literal["client", "server"]
"""Which end of a connection a channel is: the device or the base station."""

# The direction byte of the frames each side sends, so that a frame sent by
# one side never verifies when reflected back to it.
_DIRECTION: Final[dict[str, bytes]] = {"client": b"\x01", "server": b"\x02"}
_OTHER_SIDE: Final[dict[str, Side]] = {"client": "server", "server": "client"}

Payload = bytes | bytearray | memoryview
"""Anything whose raw bytes can be a frame's payload (C-contiguous)."""

# What both handshake proofs and the session key are computed over:
# server nonce, client nonce, server node name, client node name.
_Transcript = tuple[bytes, bytes, str, str]


class MessageKind(enum.IntEnum):
    """What a frame carries; the value is the ``kind`` byte of the prefix."""

    HELLO = 1
    WELCOME = 2
    PROFILE = 3
    PLAN = 4
    START = 5
    TENSOR = 6
    RESULT = 7
    REPORT = 8
    DONE = 9
    ERROR = 10
    BYE = 11
    PING = 12
    PONG = 13
    CHALLENGE = 14
    AUTH = 15
    AUTH_OK = 16
    ACK = 17


# ACK messages name what they acknowledge by a key: a task's id, or this
# for a device's DONE.
DONE_KEY = -1


# Named as the runtime knows it, hence without an "Error" suffix.
class ConnectionClosed(ProtocolError, ConnectionError):  # noqa: N818
    """The peer closed the connection, between frames or inside one (truncated)."""


@dataclass(frozen=True)
class Message:
    """One received frame.

    Attributes
    ----------
    kind:
        What the frame carries.
    header:
        The JSON-decoded metadata object.
    payload:
        The raw payload bytes; a received payload is a fresh, writable
        ``bytearray`` that :func:`decode_tensor` wraps without copying.
    """

    kind: MessageKind
    header: dict[str, Any]
    payload: Payload = field(repr=False)


@dataclass(frozen=True, slots=True)
class FramePrefix:
    """The fixed prefix of a frame, parsed and checked.

    Attributes
    ----------
    kind:
        What the frame carries.
    seq:
        The sender's sequence number of this frame (0 for its first).
    header_bytes, payload_bytes:
        Declared lengths of the JSON header and the payload.
    """

    kind: MessageKind
    seq: int
    header_bytes: int
    payload_bytes: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of the whole frame, prefix and tag included."""
        return PREFIX_BYTES + self.header_bytes + self.payload_bytes + TAG_BYTES


def parse_prefix(data: bytes | bytearray, *, max_frame_bytes: int) -> FramePrefix:
    """Parse and check a frame's fixed prefix, before any of its body is read.

    Parameters
    ----------
    data:
        Exactly :data:`PREFIX_BYTES` bytes.
    max_frame_bytes:
        The largest whole frame the reader accepts.

    Raises
    ------
    ProtocolError
        On a wrong length, magic, version or kind, or declared lengths that
        exceed :data:`MAX_HEADER_BYTES` or ``max_frame_bytes``.
    """
    if len(data) != PREFIX_BYTES:
        raise ProtocolError(
            f"frame prefix has {len(data)} bytes, expected {PREFIX_BYTES}"
        )
    magic, version, kind, seq, header_bytes, payload_bytes = _PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"frame starts with {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"frame has protocol version {version}, this side speaks {PROTOCOL_VERSION}"
        )
    try:
        message_kind = MessageKind(kind)
    except ValueError:
        raise ProtocolError(f"frame has unknown message kind {kind}") from None
    if not 2 <= header_bytes <= MAX_HEADER_BYTES:
        raise ProtocolError(
            f"frame declares a header of {header_bytes} bytes, allowed 2.."
            f"{MAX_HEADER_BYTES}"
        )
    prefix = FramePrefix(message_kind, seq, header_bytes, payload_bytes)
    if prefix.frame_bytes > max_frame_bytes:
        raise ProtocolError(
            f"{message_kind.name} frame declares {prefix.frame_bytes} bytes "
            f"(header {header_bytes}, payload {payload_bytes}), above the limit "
            f"of {max_frame_bytes} bytes"
        )
    return prefix


def tensor_header(array: npt.NDArray[Any]) -> dict[str, Any]:
    """Describe a tensor for the wire: its dtype name and shape.

    Merge the result with the task's own fields (task id, timestamps) to make
    the header of a ``TENSOR`` frame whose payload is :func:`tensor_payload`.

    Raises
    ------
    ProtocolError
        If the dtype is not one of :data:`ALLOWED_DTYPES`.
    """
    _check_dtype(array.dtype.name)
    return {"dtype": array.dtype.name, "shape": [int(dim) for dim in array.shape]}


def tensor_payload(array: npt.NDArray[Any]) -> memoryview:
    """The tensor's raw bytes in C order and little-endian byte order.

    Copies only when the array is not already C-contiguous little-endian.

    Raises
    ------
    ProtocolError
        If the dtype is not one of :data:`ALLOWED_DTYPES`.
    """
    _check_dtype(array.dtype.name)
    wire = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return wire.reshape(-1).view(np.uint8).data


def decode_tensor(header: dict[str, Any], payload: Payload) -> npt.NDArray[Any]:
    """Rebuild a tensor from a frame's header and payload, without copying.

    The array shares the payload's memory; it is writable when the payload
    is (a received payload is).

    Raises
    ------
    ProtocolError
        If the dtype is not allowed, the shape is not a list of non-negative
        integers, or the payload's length is not ``prod(shape) * itemsize``.
    """
    dtype_name = header.get("dtype")
    if not isinstance(dtype_name, str):
        raise ProtocolError(f"tensor header has dtype {dtype_name!r}, not a name")
    _check_dtype(dtype_name)
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_TENSOR_DIMS
        or not all(type(dim) is int and dim >= 0 for dim in shape)
    ):
        raise ProtocolError(
            f"tensor header has shape {shape!r}, expected a list of at most "
            f"{MAX_TENSOR_DIMS} non-negative integers"
        )
    dtype = np.dtype(dtype_name).newbyteorder("<")
    view = _byte_view(payload)
    needed = math.prod(shape) * dtype.itemsize
    if needed != view.nbytes:
        raise ProtocolError(
            f"tensor of dtype {dtype_name} and shape {shape} needs {needed} "
            f"bytes, the payload has {view.nbytes}"
        )
    try:
        return np.frombuffer(view, dtype=dtype).reshape(shape)
    except ValueError as err:
        raise ProtocolError(f"tensor shape {shape} is not usable: {err}") from err


class Channel:
    """One authenticated, framed connection between a device and the BS.

    Open one with :meth:`connect` (device side) or :meth:`accept` (BS side);
    both run the handshake.  The constructor itself takes a socket whose
    session key is already agreed.

    Sending is thread-safe.  :meth:`encode` and :meth:`write_frame` split a
    send in two for a link emulator that writes frames later: frames must
    be written in the order they were encoded, and a channel written through
    such an emulator must send nothing around it.  One thread at a time
    should receive.

    Parameters
    ----------
    sock:
        A connected stream socket.
    session_key:
        The key that tags every frame in both directions.
    node:
        The authenticated node name of the peer.
    side:
        ``"client"`` for the device end, ``"server"`` for the BS end.
    max_frame_bytes:
        The largest whole frame this channel sends or accepts.

    Attributes
    ----------
    node:
        The authenticated node name of the peer.
    side:
        Which end of the connection this channel is.
    max_frame_bytes:
        The largest whole frame this channel sends or accepts.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        session_key: bytes,
        node: str,
        side: Side,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        if max_frame_bytes < HANDSHAKE_MAX_FRAME_BYTES:
            raise ConfigError(
                f"max_frame_bytes is {max_frame_bytes}, at least "
                f"{HANDSHAKE_MAX_FRAME_BYTES} is needed"
            )
        self._sock = sock
        self._key = session_key
        self.node = node
        self.side: Side = side
        self.max_frame_bytes = max_frame_bytes
        self._limit = max_frame_bytes
        self._peer = _describe_peer(sock)
        self._closed = False

        # Sequence numbers are assigned under _send_lock, frames are written
        # under _write_lock, and _write_seq checks that both orders agree.
        self._send_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._send_seq = 0
        self._write_seq = 0

        # The receive side keeps a partly read frame across a timeout.
        self._recv_lock = threading.Lock()
        self._recv_seq = 0
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._broken: ProtocolError | None = None
        self._reset_reader()

    # -- opening ---------------------------------------------------------

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        secret: bytes,
        node: str,
        timeout_s: float,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> Channel:
        """Connect to a BS server and authenticate both ends.

        Parameters
        ----------
        host, port:
            The BS server's address.
        secret:
            The per-run secret both ends share (at least 16 bytes).
        node:
            This device's node name, which the BS learns authenticated.
        timeout_s:
            Limit on connecting plus the handshake, in seconds.
        max_frame_bytes:
            The largest whole frame this channel sends or accepts.

        Raises
        ------
        ProtocolError
            If either end fails authentication, the BS refuses the device,
            or the handshake does not complete within ``timeout_s``.
        OSError
            If the TCP connection cannot be made.
        """
        _check_secret(secret)
        _node_name(node, source="this device")
        deadline_s = time.monotonic() + timeout_s
        sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            _prepare_socket(sock)
            channel = cls(
                sock,
                session_key=b"",
                node="",
                side="client",
                max_frame_bytes=max_frame_bytes,
            )
            channel._client_handshake(secret, node, deadline_s, timeout_s)
        except BaseException:
            sock.close()
            raise
        return channel

    @classmethod
    def accept(
        cls,
        sock: socket.socket,
        *,
        secret: bytes,
        timeout_s: float,
        node: str = "bs",
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> Channel:
        """Authenticate a freshly accepted connection on the BS side.

        Parameters
        ----------
        sock:
            The socket ``listener.accept()`` returned; the channel owns it
            and closes it if the handshake fails.
        secret:
            The per-run secret both ends share (at least 16 bytes).
        timeout_s:
            Limit on the handshake, in seconds.
        node:
            This server's node name, which the device learns authenticated.
        max_frame_bytes:
            The largest whole frame this channel sends or accepts.

        Raises
        ------
        ProtocolError
            If the device fails authentication, speaks another version,
            sends a malformed frame or does not finish within ``timeout_s``.
        """
        try:
            _check_secret(secret)
            _node_name(node, source="this base station")
            deadline_s = time.monotonic() + timeout_s
            _prepare_socket(sock)
            channel = cls(
                sock,
                session_key=b"",
                node="",
                side="server",
                max_frame_bytes=max_frame_bytes,
            )
            channel._server_handshake(secret, node, deadline_s, timeout_s)
        except BaseException:
            sock.close()
            raise
        return channel

    # -- sending ---------------------------------------------------------

    def encode(
        self,
        kind: MessageKind,
        header: dict[str, Any] | None = None,
        payload: Payload = b"",
    ) -> bytes:
        """Build the next frame and take its sequence number.

        The frame must then be passed to :meth:`write_frame`, after every
        frame encoded before it.

        Raises
        ------
        ProtocolError
            If the header is not JSON metadata or the frame would exceed
            ``max_frame_bytes``.
        """
        with self._send_lock:
            frame = _encode_frame(
                kind,
                header,
                payload,
                key=self._key,
                side=self.side,
                seq=self._send_seq,
                max_frame_bytes=self._limit,
            )
            self._send_seq += 1
        return frame

    def write_frame(
        self, frame: bytes, *, pace: Callable[[int], None] | None = None
    ) -> int:
        """Write one frame from :meth:`encode` to the socket; return its size.

        Parameters
        ----------
        frame:
            The next frame in encoding order.
        pace:
            If given, the frame is written in chunks of
            :data:`WRITE_CHUNK_BYTES`, and ``pace(end)`` is called before the
            bytes up to offset ``end`` are written (lastly with
            ``end == len(frame)``), so that a link emulator can release them
            at the rate of the link.

        Raises
        ------
        ProtocolError
            If the frame is not the next one in encoding order.
        ConnectionClosed
            If the connection is closed or broken.
        """
        seq = int.from_bytes(frame[_SEQ_OFFSET : _SEQ_OFFSET + 8], "big")
        with self._write_lock:
            if seq != self._write_seq:
                raise ProtocolError(
                    f"frame {seq} to {self._who()} written out of order: the "
                    f"next frame to write is {self._write_seq}"
                )
            if self._closed:
                raise ConnectionClosed(f"channel to {self._who()} is closed")
            view = memoryview(frame)
            step = len(frame) if pace is None else WRITE_CHUNK_BYTES
            try:
                for begin in range(0, len(frame), step):
                    end = min(begin + step, len(frame))
                    if pace is not None:
                        pace(end)
                    self._sock.sendall(view[begin:end])
            except OSError as err:
                raise ConnectionClosed(
                    f"sending {len(frame)} bytes to {self._who()} failed: {err}"
                ) from err
            self._write_seq += 1
        return len(frame)

    def send(
        self,
        kind: MessageKind,
        header: dict[str, Any] | None = None,
        payload: Payload = b"",
    ) -> int:
        """Send one message now and return the bytes written (thread-safe).

        Raises
        ------
        ProtocolError
            If the header is not JSON metadata or the frame is too large.
        ConnectionClosed
            If the connection is closed or broken.
        """
        with self._send_lock:
            frame = _encode_frame(
                kind,
                header,
                payload,
                key=self._key,
                side=self.side,
                seq=self._send_seq,
                max_frame_bytes=self._limit,
            )
            self._send_seq += 1
            return self.write_frame(frame)

    # -- receiving -------------------------------------------------------

    def recv(self, timeout_s: float | None = None) -> Message:
        """Receive the next message.

        A timeout leaves a partly received frame buffered: the next call
        resumes it.  Any other error leaves the channel unusable.

        Parameters
        ----------
        timeout_s:
            Longest wait for the whole frame, in seconds; ``None`` waits
            until a frame arrives or the connection closes.

        Raises
        ------
        TimeoutError
            If no whole frame arrived within ``timeout_s``.
        ConnectionClosed
            If the peer closed the connection (inside a frame: truncated).
        ProtocolError
            If the frame is malformed, oversized, of another version,
            replayed, out of order or fails authentication.
        """
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        with self._recv_lock:
            if self._broken is not None:
                # Same class as the first error, so a closed peer stays a
                # ConnectionClosed for every later call.
                raise type(self._broken)(
                    f"channel from {self._who()} is unusable after an earlier "
                    f"error: {self._broken}"
                )
            try:
                return self._read_frame(deadline_s, timeout_s)
            except ProtocolError as err:
                self._broken = err
                raise

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Close the connection; a reader blocked in :meth:`recv` wakes up."""
        if self._closed:
            return
        self._closed = True
        # shutdown() wakes a thread blocked on the socket, close() alone not.
        with contextlib.suppress(OSError):  # already disconnected
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> Channel:
        """Return the channel itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the channel."""
        self.close()

    def __repr__(self) -> str:
        """Name the peer and this channel's side."""
        return f"Channel(node={self.node!r}, side={self.side!r}, peer={self._peer})"

    # -- internals -------------------------------------------------------

    def _who(self) -> str:
        return f"{self.node!r} at {self._peer}" if self.node else self._peer

    def _begin_session(self, key: bytes, node: str) -> None:
        """Switch from the handshake to the session key and its sequences."""
        self._key = key
        self.node = node
        self._limit = self.max_frame_bytes
        self._send_seq = self._write_seq = self._recv_seq = 0

    def _client_handshake(
        self, secret: bytes, node: str, deadline_s: float, timeout_s: float
    ) -> None:
        self._limit = HANDSHAKE_MAX_FRAME_BYTES

        # The challenge carries the server's nonce and its claimed name.
        challenge = self._handshake_recv(MessageKind.CHALLENGE, deadline_s, timeout_s)
        server_nonce = _nonce_field(challenge.header)
        server_node = _node_name(
            challenge.header.get("node"), source=f"CHALLENGE from {self._peer}"
        )

        # Prove knowledge of the secret over both nonces and both names.
        client_nonce = os.urandom(_NONCE_BYTES)
        transcript: _Transcript = (server_nonce, client_nonce, server_node, node)
        self.send(
            MessageKind.AUTH,
            {
                "nonce": client_nonce.hex(),
                "node": node,
                "proof": _proof(secret, b"client", transcript).hex(),
            },
        )

        # The server must prove the same, or it is not this run's BS.
        answer = self._handshake_recv(MessageKind.AUTH_OK, deadline_s, timeout_s)
        proof = _hex_field(answer.header, "proof", 32)
        if not hmac.compare_digest(proof, _proof(secret, b"server", transcript)):
            raise ProtocolError(
                f"base station {server_node!r} at {self._peer} failed "
                "authentication: its proof does not match this run's secret"
            )
        self._begin_session(_proof(secret, b"session", transcript), server_node)
        logger.debug("authenticated base station %r at %s", server_node, self._peer)

    def _server_handshake(
        self, secret: bytes, node: str, deadline_s: float, timeout_s: float
    ) -> None:
        self._limit = HANDSHAKE_MAX_FRAME_BYTES
        try:
            server_nonce = os.urandom(_NONCE_BYTES)
            self.send(
                MessageKind.CHALLENGE, {"nonce": server_nonce.hex(), "node": node}
            )

            # Check the device's proof before revealing anything about ours.
            auth = self._handshake_recv(MessageKind.AUTH, deadline_s, timeout_s)
            client_nonce = _nonce_field(auth.header)
            client_node = _node_name(
                auth.header.get("node"), source=f"AUTH from {self._peer}"
            )
            transcript: _Transcript = (server_nonce, client_nonce, node, client_node)
            proof = _hex_field(auth.header, "proof", 32)
            if not hmac.compare_digest(proof, _proof(secret, b"client", transcript)):
                raise ProtocolError(
                    f"device {client_node!r} at {self._peer} failed "
                    "authentication: its proof does not match this run's secret"
                )
        except ProtocolError as err:
            self._tell_refused(err)
            raise

        self.send(
            MessageKind.AUTH_OK,
            {"proof": _proof(secret, b"server", transcript).hex()},
        )
        self._begin_session(_proof(secret, b"session", transcript), client_node)
        logger.debug("authenticated device %r at %s", client_node, self._peer)

    def _handshake_recv(
        self, expected: MessageKind, deadline_s: float, timeout_s: float
    ) -> Message:
        try:
            message = self.recv(max(deadline_s - time.monotonic(), 0.0))
        except TimeoutError as err:
            raise ProtocolError(
                f"handshake with {self._peer} did not complete within "
                f"{timeout_s} s (waiting for {expected.name})"
            ) from err
        if message.kind is MessageKind.ERROR and self.side == "client":
            raise ProtocolError(
                f"base station at {self._peer} refused the handshake: "
                f"{message.header.get('reason')}"
            )
        if message.kind is not expected:
            raise ProtocolError(
                f"expected {expected.name} from {self._peer} during the "
                f"handshake, got {message.kind.name}"
            )
        return message

    def _tell_refused(self, err: ProtocolError) -> None:
        """Tell a refused device why, so both ends report the same cause."""
        try:
            self.send(MessageKind.ERROR, {"reason": str(err)})
        except ProtocolError:
            logger.debug("could not tell %s why it was refused", self._peer)

    def _reset_reader(self) -> None:
        self._rx_prefix_buf = bytearray(PREFIX_BYTES)
        self._rx_parts: list[bytearray] = [self._rx_prefix_buf]
        self._rx_index = 0
        self._rx_filled = 0
        self._rx_frame: FramePrefix | None = None
        self._rx_mac: hmac.HMAC | None = None

    def _read_frame(self, deadline_s: float | None, timeout_s: float | None) -> Message:
        # Parts are read in turn: prefix, then header, payload and tag once
        # the prefix is checked; the tag is computed as the bytes arrive.
        while True:
            self._fill_part(deadline_s, timeout_s)
            self._rx_index += 1
            self._rx_filled = 0
            if self._rx_index == 1:
                self._start_body()
            elif self._rx_index == len(self._rx_parts):
                message = self._finish_frame()
                self._reset_reader()
                return message

    def _fill_part(self, deadline_s: float | None, timeout_s: float | None) -> None:
        part = self._rx_parts[self._rx_index]
        view = memoryview(part)
        hashed = self._rx_index in (1, 2)
        while self._rx_filled < len(part):
            if self._closed:
                raise ConnectionClosed(f"channel to {self._who()} is closed")
            try:
                count = self._sock.recv_into(
                    view[self._rx_filled :], 0, socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                self._wait_readable(deadline_s, timeout_s)
                continue
            except OSError as err:
                raise ConnectionClosed(
                    f"receiving from {self._who()} failed: {err}"
                ) from err
            if count == 0:
                self._raise_eof()
            if hashed:
                assert self._rx_mac is not None
                self._rx_mac.update(view[self._rx_filled : self._rx_filled + count])
            self._rx_filled += count

    def _wait_readable(self, deadline_s: float | None, timeout_s: float | None) -> None:
        wait_s = _POLL_SLICE_S
        if deadline_s is not None:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError(
                    f"no whole frame from {self._who()} within {timeout_s} s"
                )
            wait_s = min(wait_s, remaining_s)
        self._poller.poll(max(1, math.ceil(wait_s * 1000)))

    def _raise_eof(self) -> NoReturn:
        received = sum(len(part) for part in self._rx_parts[: self._rx_index])
        received += self._rx_filled
        if received == 0:
            raise ConnectionClosed(f"{self._who()} closed the connection")
        total = PREFIX_BYTES if self._rx_frame is None else self._rx_frame.frame_bytes
        raise ConnectionClosed(
            f"{self._who()} closed the connection after {received} of the "
            f"{total} bytes of a frame (truncated)"
        )

    def _start_body(self) -> None:
        prefix = parse_prefix(self._rx_prefix_buf, max_frame_bytes=self._limit)
        if prefix.seq != self._recv_seq:
            what = "replayed" if prefix.seq < self._recv_seq else "out of order"
            raise ProtocolError(
                f"{prefix.kind.name} frame from {self._who()} is {what}: "
                f"sequence {prefix.seq}, expected {self._recv_seq}"
            )
        direction = _DIRECTION[_OTHER_SIDE[self.side]]
        self._rx_mac = hmac.new(
            self._key, direction + prefix.seq.to_bytes(8, "big"), hashlib.sha256
        )
        self._rx_mac.update(self._rx_prefix_buf)
        self._rx_frame = prefix
        self._rx_parts += [
            bytearray(prefix.header_bytes),
            bytearray(prefix.payload_bytes),
            bytearray(TAG_BYTES),
        ]

    def _finish_frame(self) -> Message:
        assert self._rx_frame is not None and self._rx_mac is not None
        prefix = self._rx_frame
        _, header_buf, payload_buf, tag = self._rx_parts
        if not hmac.compare_digest(self._rx_mac.digest(), tag):
            raise ProtocolError(
                f"{prefix.kind.name} frame {prefix.seq} from {self._who()} "
                f"({prefix.frame_bytes} bytes) has a bad authentication tag"
            )
        self._recv_seq += 1
        header = _decode_header(prefix, header_buf, self._who())
        return Message(prefix.kind, header, payload_buf)


def _encode_frame(
    kind: MessageKind,
    header: dict[str, Any] | None,
    payload: Payload,
    *,
    key: bytes,
    side: Side,
    seq: int,
    max_frame_bytes: int,
) -> bytes:
    try:
        header_bytes = json.dumps(
            {} if header is None else header,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode()
    except (TypeError, ValueError) as err:
        raise ProtocolError(
            f"header of a {kind.name} message is not JSON metadata: {err}"
        ) from err
    if not header_bytes.startswith(b"{"):
        raise ProtocolError(
            f"header of a {kind.name} message is a {type(header).__name__}, "
            "not an object"
        )
    body = _byte_view(payload)
    prefix = FramePrefix(kind, seq, len(header_bytes), body.nbytes)
    if len(header_bytes) > MAX_HEADER_BYTES or prefix.frame_bytes > max_frame_bytes:
        raise ProtocolError(
            f"{kind.name} frame would have {prefix.frame_bytes} bytes (header "
            f"{len(header_bytes)} of at most {MAX_HEADER_BYTES}, payload "
            f"{body.nbytes}), above the limit of {max_frame_bytes} bytes"
        )
    head = _PREFIX.pack(
        MAGIC, PROTOCOL_VERSION, kind, seq, len(header_bytes), body.nbytes
    )
    mac = hmac.new(key, _DIRECTION[side] + seq.to_bytes(8, "big"), hashlib.sha256)
    mac.update(head)
    mac.update(header_bytes)
    mac.update(body)
    return b"".join((head, header_bytes, body, mac.digest()))


def _decode_header(prefix: FramePrefix, data: bytearray, who: str) -> dict[str, Any]:
    def refuse_constant(name: str) -> NoReturn:
        raise ValueError(f"non-finite number {name}")

    try:
        header = json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except (ValueError, RecursionError) as err:
        raise ProtocolError(
            f"{prefix.kind.name} frame {prefix.seq} from {who} has a header "
            f"that is not JSON: {err}"
        ) from err
    if not isinstance(header, dict):
        raise ProtocolError(
            f"{prefix.kind.name} frame {prefix.seq} from {who} has a "
            f"{type(header).__name__} header, not an object"
        )
    return header


def _byte_view(payload: Payload) -> memoryview:
    view = memoryview(payload)
    if not view.c_contiguous:
        raise ProtocolError(
            f"payload of shape {view.shape} is not C-contiguous in memory"
        )
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _check_dtype(name: str) -> None:
    if name not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"tensor dtype {name!r} may not cross the wire; allowed: "
            f"{', '.join(ALLOWED_DTYPES)}"
        )


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        size = len(secret) if isinstance(secret, bytes) else type(secret).__name__
        raise ConfigError(
            f"the run secret has {size} bytes, at least {MIN_SECRET_BYTES} are needed"
        )


def _node_name(name: object, *, source: str) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_NODE_NAME_CHARS
        or not name.isprintable()
    ):
        raise ProtocolError(
            f"{source} names node {name!r}, expected 1..{MAX_NODE_NAME_CHARS} "
            "printable characters"
        )
    return name


def _hex_field(header: dict[str, Any], name: str, size: int) -> bytes:
    value = header.get(name)
    try:
        data = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        data = b""
    if len(data) != size:
        raise ProtocolError(
            f"handshake field {name!r} is {value!r}, expected {size} bytes in hex"
        )
    return data


def _nonce_field(header: dict[str, Any]) -> bytes:
    return _hex_field(header, "nonce", _NONCE_BYTES)


def _proof(secret: bytes, label: bytes, transcript: _Transcript) -> bytes:
    # Length prefixes keep distinct transcripts from hashing the same bytes.
    server_nonce, client_nonce, server_node, client_node = transcript
    mac = hmac.new(secret, b"splitlab/" + label, hashlib.sha256)
    for part in (
        server_nonce,
        client_nonce,
        server_node.encode(),
        client_node.encode(),
    ):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()


def _prepare_socket(sock: socket.socket) -> None:
    # Blocking mode for sendall; reads poll with their own deadline.
    sock.settimeout(None)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Small control frames must not wait for Nagle's algorithm.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _describe_peer(sock: socket.socket) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return "an unconnected socket"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address) or "a local socket"
