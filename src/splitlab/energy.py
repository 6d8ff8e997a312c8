"""Energy: what a task costs a device in joules, modelled or metered.

The model (:class:`PowerModel`) is linear in CPU utilisation: a board draws
``idle_w`` doing nothing and ``busy_w`` with one core fully busy (the device
agent runs one thread), so at utilisation ``u`` of that core it draws
``idle_w + u * (busy_w - idle_w)``.  Its radio adds ``radio_w`` while it
transmits.  A task then costs

    E = device_s * busy_w                  computing its head (one core busy)
      + transmission_s * idle_w            waiting while its tensor is on the link
      + airtime_s * radio_w                the radio sending the tensor

where ``airtime_s = min(transmission_s, 8 * cut_bytes / rate_bps)`` is the
time the radio actually sends at the link's rate (propagation delay costs
the radio nothing extra).  The figures per device class and their sources
are in ``docs/device-classes.md``.

Real boards can carry a power meter.  :class:`HwmonPowerMeter` reads the
Linux hwmon files of an INA219/INA226/INA260-class monitor
(``power1_input`` in microwatts, else ``curr1_input`` in milliamps times
``in1_input`` in millivolts); anything else plugs in as a
:class:`PowerMeter` through the ``splitlab.power_meters`` entry point group.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import yaml

from splitlab.errors import ConfigError, TestbedError
from splitlab.results import NodeRecord, ResultStore, TaskRecord

logger = logging.getLogger(__name__)

HWMON_ROOT = Path("/sys/class/hwmon")
METER_ENTRY_POINTS = "splitlab.power_meters"


@dataclass(frozen=True, slots=True)
class PowerModel:
    """A device class's power draw, in watts.

    Attributes
    ----------
    idle_w:
        The whole board, idle (no display, no USB devices).
    busy_w:
        The whole board with one core fully busy.
    radio_w:
        What the radio adds while it transmits.
    """

    idle_w: float
    busy_w: float
    radio_w: float

    def power_w(self, utilisation: float) -> float:
        """The board's draw with one core busy ``utilisation`` of the time."""
        u = min(1.0, max(0.0, utilisation))
        return self.idle_w + u * (self.busy_w - self.idle_w)


POWER_MODELS: dict[str, PowerModel] = {
    "rpi4": PowerModel(idle_w=2.7, busy_w=3.6, radio_w=0.5),
    "rpi3": PowerModel(idle_w=1.9, busy_w=2.7, radio_w=0.5),
    "jetson-nano": PowerModel(idle_w=1.9, busy_w=3.0, radio_w=0.5),
    "laptop": PowerModel(idle_w=6.0, busy_w=15.0, radio_w=0.8),
}


@dataclass(frozen=True, slots=True)
class TaskEnergy:
    """One task's energy on its device, in joules.

    Attributes
    ----------
    task_id, device:
        The task.
    compute_j:
        Running the head: ``device_s * busy_w``.
    link_j:
        The board idling while the tensor is on the link, plus the radio's
        extra draw for the airtime.
    total_j:
        ``compute_j + link_j``.
    """

    task_id: int
    device: str
    compute_j: float
    link_j: float
    total_j: float


def task_energy(
    model: PowerModel,
    *,
    task_id: int,
    device: str,
    device_s: float,
    transmission_s: float,
    cut_bytes: int,
    rate_bps: float | None,
) -> TaskEnergy:
    """A task's energy from its measured times (see the module's formula).

    ``rate_bps`` ``None`` (link unknown) counts the whole transmission as
    airtime.
    """
    airtime_s = transmission_s
    if rate_bps is not None and rate_bps > 0:
        airtime_s = min(transmission_s, 8 * cut_bytes / rate_bps)
    compute_j = device_s * model.busy_w
    link_j = transmission_s * model.idle_w + airtime_s * model.radio_w
    return TaskEnergy(task_id, device, compute_j, link_j, compute_j + link_j)


def device_classes(scenario_yaml: str) -> dict[str, str]:
    """Each device's class in a stored scenario (devices without one omitted)."""
    data = yaml.safe_load(scenario_yaml)
    devices = data.get("devices") if isinstance(data, dict) else None
    return {
        str(device["name"]): str(device["class"])
        for device in (devices if isinstance(devices, list) else [])
        if isinstance(device, dict) and device.get("class") in POWER_MODELS
    }


def run_energy(store: ResultStore, run_id: int) -> list[TaskEnergy]:
    """Every task's energy in a run, derived from the store.

    Only devices that name a class with a power model are counted.
    """
    classes = device_classes(store.run(run_id).scenario_yaml)
    rates = {node.node: _rate_bps(node) for node in store.nodes(run_id)}
    return [
        _energy_of(task, POWER_MODELS[classes[task.device]], rates.get(task.device))
        for task in store.tasks(run_id)
        if task.device in classes
    ]


def _energy_of(task: TaskRecord, model: PowerModel, rate: float | None) -> TaskEnergy:
    return task_energy(
        model,
        task_id=task.task_id,
        device=task.device,
        device_s=task.device_s,
        transmission_s=task.transmission_s,
        cut_bytes=task.cut_bytes,
        rate_bps=rate,
    )


def _rate_bps(node: NodeRecord) -> float | None:
    if node.link is None or "rate_mbps" not in node.link:
        return None
    return float(node.link["rate_mbps"]) * 1e6


# Power meters ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PowerReading:
    """One reading of a power meter.

    Attributes
    ----------
    at:
        Monotonic time of the reading, in seconds.
    power_w:
        Power.
    current_a, voltage_v:
        Current and bus voltage, when the meter reports them.
    """

    at: float
    power_w: float
    current_a: float | None = None
    voltage_v: float | None = None


class PowerMeter(Protocol):
    """Anything that reads a board's power now."""

    def read(self) -> PowerReading:
        """One reading."""
        ...


class HwmonPowerMeter:
    """A power monitor chip seen through Linux hwmon sysfs files.

    Parameters
    ----------
    path:
        The chip's hwmon directory, such as ``/sys/class/hwmon/hwmon2``.

    Raises
    ------
    TestbedError
        If the directory has neither ``power1_input`` nor both
        ``curr1_input`` and ``in1_input``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        has_power = (self.path / "power1_input").is_file()
        has_vi = all((self.path / f).is_file() for f in ("curr1_input", "in1_input"))
        if not (has_power or has_vi):
            raise TestbedError(
                f"{self.path} is not a power monitor: it has no power1_input, "
                "nor curr1_input and in1_input"
            )

    @property
    def chip(self) -> str | None:
        """The driver's name for the chip (the ``name`` file)."""
        return _read_text(self.path / "name")

    def read(self) -> PowerReading:
        """Read power, current and voltage (in SI units)."""
        at = time.monotonic()
        micro_w = _read_int(self.path / "power1_input")
        milli_a = _read_int(self.path / "curr1_input")
        milli_v = _read_int(self.path / "in1_input")
        current_a = None if milli_a is None else milli_a / 1e3
        voltage_v = None if milli_v is None else milli_v / 1e3
        if micro_w is not None:
            power_w = micro_w / 1e6
        elif current_a is not None and voltage_v is not None:
            power_w = current_a * voltage_v
        else:
            raise TestbedError(f"cannot read power from {self.path}")
        return PowerReading(at, power_w, current_a, voltage_v)


def find_hwmon(chip: str, *, root: Path = HWMON_ROOT) -> Path:
    """The hwmon directory whose ``name`` is ``chip`` (``ina219``, ``ina260``).

    Raises
    ------
    TestbedError
        If no hwmon device under ``root`` has that name.
    """
    seen = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        name = _read_text(entry / "name")
        seen.append(f"{entry.name}={name}")
        if name == chip:
            return entry
    raise TestbedError(
        f"no hwmon device named {chip!r} under {root} "
        f"(found: {', '.join(seen) or 'none'})"
    )


def load_meter(spec: str, *, root: Path = HWMON_ROOT) -> PowerMeter:
    """A meter from its description.

    ``hwmon:/sys/class/hwmon/hwmon2`` (a directory), ``hwmon:ina219`` (a chip
    name, looked up under ``root``), or the name of an entry point in the
    ``splitlab.power_meters`` group whose object, called with no
    arguments, returns a :class:`PowerMeter`.

    Raises
    ------
    ConfigError
        If ``spec`` names nothing known.
    """
    kind, _, where = spec.partition(":")
    if kind == "hwmon" and where:
        path = Path(where) if "/" in where else find_hwmon(where, root=root)
        return HwmonPowerMeter(path)
    for entry in entry_points(group=METER_ENTRY_POINTS):
        if entry.name == spec:
            meter: Any = entry.load()()
            return meter  # type: ignore[no-any-return]
    raise ConfigError(
        f"unknown power meter {spec!r}: give hwmon:DIR, hwmon:CHIP or an entry "
        f"point of group {METER_ENTRY_POINTS}"
    )


def energy_j(readings: Sequence[PowerReading]) -> float:
    """Energy over a series of readings, by the trapezoid rule, in joules."""
    total = 0.0
    for before, after in itertools.pairwise(readings):
        total += (after.at - before.at) * (before.power_w + after.power_w) / 2
    return total


def mean_by_device(energies: Sequence[TaskEnergy]) -> Mapping[str, float]:
    """Mean joules per task for every device."""
    sums: dict[str, list[float]] = {}
    for energy in energies:
        sums.setdefault(energy.device, []).append(energy.total_j)
    return {device: math.fsum(values) / len(values) for device, values in sums.items()}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise TestbedError(f"{path} holds {text!r}, not an integer") from None
