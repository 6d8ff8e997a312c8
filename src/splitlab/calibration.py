"""Device classes, and the calibration that turns them into CPU shares.

A device class (``rpi4``, ``rpi3``, ``jetson-nano``, ``laptop``) names a real
board by its single-core speed and its memory.  The emulation holds a device
process to a share of one core of *this* machine, so the share must be
measured here: :func:`measure_gflops` times a fixed fp32 matrix product on
one thread, and a class's share is its reference figure divided by this
machine's (:func:`class_share`).  The measurement is cached per machine
(CPU model and torch version) under the cache folder, so a run does not pay
for it; ``splitlab calibrate --force`` measures again.

The reference figures and their sources are in ``docs/device-classes.md``;
they are estimates with an uncertainty of about a third, which is the
uncertainty of every emulated device speed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from splitlab.errors import ConfigError

logger = logging.getLogger(__name__)

# The workload: a square fp32 matrix product, large enough to run from the
# caches at full vector speed, small enough that one product takes a
# fraction of a millisecond on a desktop core.
GEMM_SIZE = 256
REPEATS = 9
REPEAT_S = 0.15
# A class cannot run faster than the core that emulates it, and a limit
# finer than the smallest CPU share the limiter enforces is not a limit.
MAX_SHARE = 1.0
MIN_SHARE = 0.01
# Names the workload and how it is timed; part of the cache key, so a
# change to either measures again.
METHOD = f"fp32-gemm-{GEMM_SIZE}-one-thread-cpu-time"


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """A kind of end device, described by figures of the real board.

    Attributes
    ----------
    name:
        The name a scenario uses (``class: rpi4``).
    title:
        The board, for people.
    cpu:
        The CPU core and clock the reference figure belongs to.
    reference_gflops:
        fp32 matrix-product throughput of one core of the board, GFLOP/s.
    memory_mb:
        The board's memory.
    """

    name: str
    title: str
    cpu: str
    reference_gflops: float
    memory_mb: int


CLASSES: dict[str, DeviceClass] = {
    spec.name: spec
    for spec in (
        DeviceClass("rpi4", "Raspberry Pi 4 Model B", "Cortex-A72, 1.5 GHz", 6.0, 4096),
        DeviceClass(
            "rpi3", "Raspberry Pi 3 Model B+", "Cortex-A53, 1.4 GHz", 2.5, 1024
        ),
        DeviceClass(
            "jetson-nano",
            "NVIDIA Jetson Nano (CPU only)",
            "Cortex-A57, 1.43 GHz",
            4.0,
            4096,
        ),
        DeviceClass(
            "laptop", "laptop (x86-64, AVX2 and FMA)", "one core at 4 GHz", 80.0, 16384
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Calibration:
    """This machine's single-core speed, as measured.

    Attributes
    ----------
    cpu_model:
        The CPU's model name (``/proc/cpuinfo``).
    torch_version:
        The torch that ran the workload.
    gflops:
        Median fp32 GFLOP/s over the repeats, one thread.
    spread:
        ``(max - min) / median`` over the repeats: how noisy the machine was.
    repeats:
        How many timed repeats the median is of.
    measured_at:
        Unix time of the measurement.
    """

    cpu_model: str
    torch_version: str
    gflops: float
    spread: float
    repeats: int
    measured_at: float

    def share(self, device_class: str) -> float:
        """The CPU share of this machine that emulates ``device_class``."""
        return class_share(_lookup(device_class).reference_gflops, self.gflops)

    def record(self) -> dict[str, object]:
        """What a run stores about the calibration it used."""
        return {
            **asdict(self),
            "shares": {name: self.share(name) for name in CLASSES},
        }


def class_share(reference_gflops: float, machine_gflops: float) -> float:
    """The share of one core of this machine that runs as fast as a board.

    The ratio of the two speeds, held between :data:`MIN_SHARE` and
    :data:`MAX_SHARE` (a faster board gets a whole core).

    Raises
    ------
    ConfigError
        If either figure is not a positive finite number.
    """
    for label, value in (("reference", reference_gflops), ("machine", machine_gflops)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{label} GFLOP/s must be positive, got {value!r}")
    return min(MAX_SHARE, max(MIN_SHARE, reference_gflops / machine_gflops))


def measure_gflops(
    *, size: int = GEMM_SIZE, repeats: int = REPEATS, repeat_s: float = REPEAT_S
) -> tuple[float, float]:
    """Time an fp32 ``size`` x ``size`` matrix product on one thread.

    Returns
    -------
    tuple[float, float]
        The median GFLOP/s per CPU second over ``repeats`` rounds of about
        ``repeat_s`` of CPU time each, and their spread
        ``(max - min) / median``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        out = torch.empty(size, size)
        flop = 2.0 * size**3

        # Warm up, and size a round so it takes about repeat_s of CPU.
        start = time.process_time()
        torch.mm(a, b, out=out)
        torch.mm(a, b, out=out)
        once_s = max((time.process_time() - start) / 2, 1e-6)
        per_round = max(1, round(repeat_s / once_s))

        # CPU time, not wall time: on a shared machine the wall clock counts
        # the moments other processes held the core, the CPU clock does not,
        # and a device held to a share gets that share of a whole core.
        rates = []
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(per_round):
                torch.mm(a, b, out=out)
            elapsed = max(time.process_time() - start, 1e-6)
            rates.append(flop * per_round / elapsed / 1e9)
    finally:
        torch.set_num_threads(threads)
    median = statistics.median(rates)
    return median, (max(rates) - min(rates)) / median


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo`` (else the platform's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file(root: Path | None = None) -> Path:
    """Where this machine's calibration is cached.

    The file name carries a hash of the CPU model, the torch version and
    the :data:`METHOD`, so a new torch, a disk moved to another machine or
    a changed workload measures again.
    """
    import torch

    from splitlab.weights import cache_dir

    identity = f"{cpu_model()}\n{torch.__version__}\n{METHOD}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    return (root or cache_dir()) / "calibration" / f"{key[:16]}.json"


def calibrate(*, force: bool = False, root: Path | None = None) -> Calibration:
    """This machine's calibration: from the cache, else measured and cached.

    Parameters
    ----------
    force:
        Measure even when a cached calibration exists.
    root:
        The cache folder (default: :func:`splitlab.weights.cache_dir`).
    """
    import torch

    path = cache_file(root)
    if not force and path.is_file():
        try:
            cached = Calibration(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            logger.warning("ignoring unreadable calibration %s: %s", path, error)
        else:
            logger.debug("calibration from %s: %.1f GFLOP/s", path, cached.gflops)
            return cached

    gflops, spread = measure_gflops()
    calibration = Calibration(
        cpu_model=cpu_model(),
        torch_version=torch.__version__,
        gflops=gflops,
        spread=spread,
        repeats=REPEATS,
        measured_at=time.time(),
    )
    logger.info("calibrated: %.1f GFLOP/s on one thread (spread %.0f%%)",
                gflops, spread * 100)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(calibration), indent=2))
    partial.replace(path)
    _current.cache_clear()
    return calibration


@functools.cache
def _current() -> Calibration:
    return calibrate()


def current() -> Calibration:
    """The calibration this process uses, read or measured once."""
    return _current()


def share_of(device_class: str) -> float:
    """The CPU share that emulates ``device_class`` on this machine."""
    return current().share(device_class)


def _lookup(device_class: str) -> DeviceClass:
    try:
        return CLASSES[device_class]
    except KeyError:
        raise ConfigError(
            f"unknown device class {device_class!r}; known: {', '.join(CLASSES)}"
        ) from None
