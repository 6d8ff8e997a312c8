"""Codecs for the tensor at the cut: how a device's activation crosses the link.

A codec name is a number format, optionally followed by ``+`` and a lossless
compressor: ``fp32``, ``fp16``, ``int8``, ``fp32+zstd``, ``int8+lz4``...

``fp32``
    The activation's own float32 bytes; exact.
``fp16``
    Rounded to IEEE half precision (values beyond its range become
    infinite); half the bytes.
``int8``
    Affine quantisation per tensor: ``scale = (max - min) / 255`` and an
    integer ``zero_point = round(-min / scale) - 128``; every element becomes
    ``q = clamp(round(x / scale) + zero_point, -128, 127)`` and is decoded as
    ``(q - zero_point) * scale``.  The error of every element is at most
    ``scale / 2``: with ``y = x / scale + zero_point`` one has
    ``y = (x - min) / scale - 128 + e`` where ``e`` is the rounding error of
    the zero point, ``|e| <= 1/2``, so ``y`` lies in ``[-128.5, 127.5]``; on
    that interval ``clamp(round(y))`` is within ``1/2`` of ``y``, and the
    decoded value differs from ``x`` by ``|q - y| * scale``.  A constant
    tensor uses ``scale = 1``.  A quarter of the bytes.
``+zstd``, ``+lz4``
    The encoded bytes compressed by Zstandard (level 3) or LZ4 (block
    format); lossless.

:func:`encode` returns a JSON header and the payload bytes; :func:`decode`
rebuilds a float32 array from them and refuses, with a
:class:`~splitlab.errors.ProtocolError`, any header whose fields are of the
wrong type, whose shape does not match the payload's size, or whose payload
does not decompress to exactly that size.  Nothing is ever pickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import lz4.block
import numpy as np
import numpy.typing as npt
import zstandard

from splitlab.errors import ConfigError, ProtocolError

Format = Literal["fp32", "fp16", "int8"]
Compressor = Literal["zstd", "lz4"]

FORMATS: Final[tuple[Format, ...]] = ("fp32", "fp16", "int8")
"""The number formats, from exact to most compact."""

COMPRESSORS: Final[tuple[Compressor, ...]] = ("zstd", "lz4")
"""The lossless compressors a format may be followed by."""

CODECS: Final[tuple[str, ...]] = tuple(
    name
    for number_format in FORMATS
    for name in (number_format, *(f"{number_format}+{c}" for c in COMPRESSORS))
)
"""Every codec name, e.g. ``fp32``, ``fp16+zstd``, ``int8+lz4``."""

DEFAULT_CODEC: Final = "fp32"
"""The codec of a device that names none: the exact float32 bytes."""

MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
"""The largest tensor :func:`decode` agrees to rebuild, in bytes."""

MAX_DIMS: Final = 32
"""The most dimensions an encoded tensor may have."""

ZSTD_LEVEL: Final = 3
"""The Zstandard compression level."""

INTEGER_DTYPE: Final = "int64"
"""The wire dtype of an integer tensor, which every codec sends exactly."""

# The dtype each format puts on the wire.
_WIRE_DTYPE: Final[dict[str, str]] = {
    "fp32": "float32",
    "fp16": "float16",
    "int8": "int8",
}
_FORMAT_OF_DTYPE: Final[dict[str, Format]] = {
    "float32": "fp32",
    "float16": "fp16",
    "int8": "int8",
}
_COMPRESSOR_OF_NAME: Final[dict[str, Compressor]] = {c: c for c in COMPRESSORS}
_INT8_MIN, _INT8_MAX = -128, 127
_INT8_LEVELS = _INT8_MAX - _INT8_MIN
# A zero point beyond this is not one :func:`encode` can produce for a tensor
# of finite float32 values and a usable scale.
_MAX_ZERO_POINT = 2**62


@dataclass(frozen=True, slots=True)
class Codec:
    """A number format and an optional lossless compressor.

    Attributes
    ----------
    number_format:
        ``fp32``, ``fp16`` or ``int8``.
    compressor:
        ``zstd``, ``lz4`` or ``None``.
    """

    number_format: Format
    compressor: Compressor | None = None

    @property
    def name(self) -> str:
        """The codec's name, as a scenario writes it (``int8+zstd``)."""
        if self.compressor is None:
            return self.number_format
        return f"{self.number_format}+{self.compressor}"

    @property
    def lossy(self) -> bool:
        """Whether decoding may not give back the float32 values exactly."""
        return self.number_format != "fp32"

    def encode(self, array: npt.NDArray[Any]) -> tuple[dict[str, Any], bytes]:
        """Encode ``array``; see :func:`encode`."""
        return encode(array, self)


def parse_codec(name: str, *, field: str = "codec") -> Codec:
    """The codec named ``name``.

    Raises
    ------
    ConfigError
        Naming ``field`` and the value, if ``name`` is not one of :data:`CODECS`.
    """
    number_format, _, compressor = name.partition("+")
    if name not in CODECS:
        raise ConfigError(
            f"{field}: unknown codec {name!r}; known: {', '.join(CODECS)}"
        )
    return Codec(
        number_format=_FORMAT_OF_DTYPE[_WIRE_DTYPE[number_format]],
        compressor=_COMPRESSOR_OF_NAME.get(compressor),
    )


def encode(
    array: npt.NDArray[Any], codec: Codec | str = DEFAULT_CODEC
) -> tuple[dict[str, Any], bytes]:
    """Encode a float tensor for the link.

    Parameters
    ----------
    array:
        The tensor; it is read as float32.
    codec:
        A :class:`Codec` or a codec name.

    Returns
    -------
    tuple[dict, bytes]
        The header (``codec``, ``dtype``, ``shape``, ``scale``,
        ``zero_point``, ``compressor``: JSON metadata) and the payload.

    Raises
    ------
    ProtocolError
        If ``int8`` is asked for a tensor with infinite or NaN values.
    """
    if isinstance(codec, str):
        codec = parse_codec(codec)
    scale, zero_point = 1.0, 0
    # Integers (a text model's token ids) cross exactly, whatever the number
    # format; only the compressor applies.
    integral = np.issubdtype(np.asarray(array).dtype, np.integer)
    values = np.ascontiguousarray(array, dtype="<i8" if integral else np.float32)

    encoded: npt.NDArray[Any]
    if integral:
        encoded = values
    elif codec.number_format == "fp32":
        encoded = values.astype("<f4", copy=False)
    elif codec.number_format == "fp16":
        with np.errstate(over="ignore"):
            encoded = values.astype("<f2")
    else:
        scale, zero_point = _affine(values)
        wide = values.astype(np.float64)
        quantised = np.clip(
            np.rint(wide / scale) + zero_point, _INT8_MIN, _INT8_MAX
        ).astype(np.int8)
        encoded = quantised

    payload = encoded.tobytes()
    if codec.compressor == "zstd":
        payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
    elif codec.compressor == "lz4":
        payload = lz4.block.compress(payload, store_size=False)
    header = {
        "codec": codec.name,
        "dtype": INTEGER_DTYPE if integral else _WIRE_DTYPE[codec.number_format],
        "shape": [int(dim) for dim in values.shape],
        "scale": scale,
        "zero_point": zero_point,
        "compressor": codec.compressor,
    }
    return header, payload


def decode(
    header: dict[str, Any], payload: bytes | bytearray | memoryview
) -> npt.NDArray[Any]:
    """Rebuild the tensor that :func:`encode` encoded: float32, or int64 for
    integers (token ids), which cross exactly.

    Raises
    ------
    ProtocolError
        If the header is not an object with a known ``dtype`` and
        ``compressor``, a shape of at most :data:`MAX_DIMS` non-negative
        integers whose tensor fits in :data:`MAX_DECODED_BYTES`, and (for
        ``int8``) a finite positive ``scale`` and an integer ``zero_point``;
        or if the payload does not hold exactly the shape's bytes.
    """
    if not isinstance(header, dict):
        raise ProtocolError(f"codec header is a {type(header).__name__}, not an object")
    dtype_name = header.get("dtype")
    allowed = (*_FORMAT_OF_DTYPE, INTEGER_DTYPE)
    if not isinstance(dtype_name, str) or dtype_name not in allowed:
        raise ProtocolError(
            f"codec header has dtype {dtype_name!r}; allowed: {', '.join(allowed)}"
        )
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(dim) is int and dim >= 0 for dim in shape)
    ):
        raise ProtocolError(
            f"codec header has shape {shape!r}, expected a list of at most "
            f"{MAX_DIMS} non-negative integers"
        )
    compressor = header.get("compressor")
    if compressor is not None and compressor not in COMPRESSORS:
        raise ProtocolError(
            f"codec header has compressor {compressor!r}; allowed: "
            f"{', '.join(COMPRESSORS)} or null"
        )
    dtype = np.dtype(dtype_name).newbyteorder("<")
    elements = math.prod(shape)
    needed = elements * dtype.itemsize
    if needed > MAX_DECODED_BYTES:
        raise ProtocolError(
            f"codec header has shape {shape}: {needed} bytes of {dtype_name}, "
            f"above the limit of {MAX_DECODED_BYTES} bytes"
        )
    scale, zero_point = 1.0, 0
    if dtype_name == "int8":
        scale, zero_point = _int8_parameters(header)

    raw = _decompress(bytes(payload), compressor, needed)
    if len(raw) != needed:
        raise ProtocolError(
            f"tensor of dtype {dtype_name} and shape {shape} needs {needed} "
            f"bytes, the payload holds {len(raw)}"
        )
    encoded = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype_name == INTEGER_DTYPE:
        return encoded.astype(np.int64)
    if dtype_name == "int8":
        wide = (encoded.astype(np.float64) - zero_point) * scale
        return wide.astype(np.float32)
    return encoded.astype(np.float32)


def _affine(values: npt.NDArray[np.float32]) -> tuple[float, int]:
    """The int8 ``scale`` and ``zero_point`` of ``values``."""
    if values.size == 0:
        return 1.0, 0
    if not np.all(np.isfinite(values)):
        raise ProtocolError(
            "int8 codec cannot encode a tensor with infinite or NaN values"
        )
    low, high = float(values.min()), float(values.max())
    scale = (high - low) / _INT8_LEVELS
    if scale <= 0 or not math.isfinite(scale):
        scale = 1.0
    zero_point = round(-low / scale) + _INT8_MIN
    return scale, zero_point


def _int8_parameters(header: dict[str, Any]) -> tuple[float, int]:
    scale = header.get("scale")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ProtocolError(
            f"int8 codec header has scale {scale!r}, expected a finite positive number"
        )
    zero_point = header.get("zero_point")
    if type(zero_point) is not int or abs(zero_point) > _MAX_ZERO_POINT:
        raise ProtocolError(
            f"int8 codec header has zero_point {zero_point!r}, expected an integer "
            f"within +-{_MAX_ZERO_POINT}"
        )
    return float(scale), zero_point


def _decompress(payload: bytes, compressor: object, needed: int) -> bytes:
    """Undo the compressor, refusing output larger than ``needed`` bytes."""
    if compressor is None:
        return payload
    try:
        if compressor == "zstd":
            return zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=needed
            )
        return bytes(lz4.block.decompress(payload, uncompressed_size=needed))
    except (zstandard.ZstdError, lz4.block.LZ4BlockError, ValueError) as error:
        raise ProtocolError(
            f"{compressor} payload of {len(payload)} bytes does not decompress "
            f"to the {needed} bytes its header announces: {error}"
        ) from None
