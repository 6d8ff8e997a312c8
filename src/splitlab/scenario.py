"""Scenario files: the one description of an experiment.

A scenario names the nodes, their links and limits, the model, the data, the
workload, the planning algorithm and the BS scheduler.  It is read from YAML
and validated once, here; every later layer receives the frozen
:class:`Scenario`.  Mistakes are reported with the file, the field's path and
the offending value.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec

DEFAULT_SCENARIO = "default"

# Presets a device can name with ``class``: a share of one core of the machine
# that runs the emulation, and the board's memory.
DEVICE_CLASSES: dict[str, tuple[float, int]] = {
    "rpi4": (0.25, 4096),
    "rpi3": (0.12, 1024),
}

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkConfig(_Strict):
    """One device's link to the base station."""

    latency_ms: NonNegativeFloat
    rate_mbps: PositiveFloat
    jitter_ms: NonNegativeFloat = 0.0

    def spec(self) -> LinkSpec:
        """The link in SI units."""
        return LinkSpec(
            latency_s=self.latency_ms / 1e3,
            rate_bps=self.rate_mbps * 1e6,
            jitter_s=self.jitter_ms / 1e3,
        )


class DeviceConfig(_Strict):
    """An end device: its speed, memory and link."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    device_class: Literal["rpi4", "rpi3"] | None = Field(default=None, alias="class")
    cpu_share: Annotated[float, Field(gt=0, le=64)] | None = None
    memory_mb: Annotated[int, Field(gt=0)] | None = None
    link: LinkConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _needs_speed(self) -> Self:
        if self.device_class is None and self.cpu_share is None:
            raise ValueError("give a device class or a cpu_share")
        return self

    @property
    def share(self) -> float:
        """The share of one core the device is held to."""
        if self.cpu_share is not None:
            return self.cpu_share
        assert self.device_class is not None
        return DEVICE_CLASSES[self.device_class][0]

    @property
    def memory_bytes(self) -> int:
        """The device's memory."""
        if self.memory_mb is not None:
            return self.memory_mb * 2**20
        if self.device_class is not None:
            return DEVICE_CLASSES[self.device_class][1] * 2**20
        return 4096 * 2**20


class BaseStationConfig(_Strict):
    """The base station: how many tasks it serves at once."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "bs"
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    threads: Annotated[int, Field(ge=1, le=64)] = 1


class DataConfig(_Strict):
    """Where the input samples come from."""

    dataset: Literal["mnist", "cifar10"] = "mnist"
    dir: Path | None = None

    @model_validator(mode="after")
    def _cifar_needs_dir(self) -> Self:
        if self.dataset == "cifar10" and self.dir is None:
            raise ValueError("dataset cifar10 needs 'dir', the local CIFAR-10 folder")
        return self


class WorkloadConfig(_Strict):
    """How many tasks each device generates, and when."""

    tasks_per_device: Annotated[int, Field(ge=1, le=100_000)] = 20
    period_ms: PositiveFloat = 250.0
    arrivals: Literal["periodic", "poisson"] = "periodic"


class ProfilingConfig(_Strict):
    """How stages are timed."""

    warmup: Annotated[int, Field(ge=0, le=1000)] = 5
    repeats: Annotated[int, Field(ge=1, le=10_000)] = 20


class TrainingConfig(_Strict):
    """How the bundled model's weights are trained when none are cached."""

    epochs: Annotated[int, Field(ge=1, le=100)] = 2
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2


class Scenario(_Strict):
    """A whole experiment, validated."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    seed: int = 1
    backend: Literal["local"] = "local"
    model: str = "alexnet"
    data: DataConfig = DataConfig()
    workload: WorkloadConfig = WorkloadConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    training: TrainingConfig = TrainingConfig()
    algorithm: str = "greedy"
    scheduler: str = "fcfs"
    base_station: BaseStationConfig = BaseStationConfig()
    devices: Annotated[tuple[DeviceConfig, ...], Field(min_length=1, max_length=256)]

    @field_validator("devices")
    @classmethod
    def _unique_names(
        cls, devices: tuple[DeviceConfig, ...]
    ) -> tuple[DeviceConfig, ...]:
        seen: set[str] = set()
        for device in devices:
            if device.name in seen:
                raise ValueError(f"device name {device.name!r} is used twice")
            seen.add(device.name)
        return devices

    @model_validator(mode="after")
    def _known_names(self) -> Self:
        # Imported here: the registries import torch and the planner, which a
        # scenario file check should not pay for unless it gets this far.
        from splitlab.models import MODELS
        from splitlab.plan import ALGORITHMS, is_algorithm_reference
        from splitlab.schedule import SCHEDULERS

        for field, value, known in (
            ("model", self.model, MODELS),
            ("algorithm", self.algorithm, ALGORITHMS),
            ("scheduler", self.scheduler, SCHEDULERS),
        ):
            # A user algorithm (file.py:name, entrypoint:NAME) is loaded where
            # the plan is made, on the BS, not where the scenario is read.
            if field == "algorithm" and is_algorithm_reference(value):
                continue
            if value not in known:
                names = ", ".join(sorted(known))
                raise ValueError(f"unknown {field} {value!r}; known: {names}")
        if self.base_station.name in {device.name for device in self.devices}:
            raise ValueError(
                f"base station name {self.base_station.name!r} is also a device name"
            )
        return self

    def to_yaml(self) -> str:
        """The scenario as YAML that :func:`parse_scenario` reads back."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)

    def fingerprint(self) -> str:
        """A short hash of the scenario's content."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]

    def with_overrides(self, **fields: Any) -> Scenario:
        """A validated copy with top-level or dotted fields replaced.

        ``with_overrides(algorithm="greedy", **{"workload.tasks_per_device": 5})``
        """
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for dotted, value in fields.items():
            if value is None:
                continue
            target = data
            *parents, leaf = dotted.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        return parse_scenario(data, source="command line")


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ""
    for part in first["loc"]:
        location += f"[{part}]" if isinstance(part, int) else f".{part}"
    location = location.lstrip(".") or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    text = f"{source}: {location}: {message}"
    if first["type"] not in {"missing"} and not location.startswith("(top"):
        text += f" (got {first['input']!r})"
    more = error.error_count() - 1
    if more:
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return text


def parse_scenario(data: object, *, source: str) -> Scenario:
    """Validate already-parsed YAML data into a :class:`Scenario`.

    Raises
    ------
    ConfigError
        Naming ``source``, the field's path and the value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a scenario must be a mapping, got {data!r}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Read and validate a scenario file; ``None`` is the bundled default.

    A bare name such as ``default`` names a bundled scenario.
    """
    if path is None:
        path = DEFAULT_SCENARIO
    candidate = Path(path)
    if not candidate.exists() and candidate.suffix == "" and "/" not in str(path):
        bundled = resources.files("splitlab") / "scenarios" / f"{path}.yaml"
        if bundled.is_file():
            return parse_scenario(
                yaml.safe_load(bundled.read_text()), source=f"{path}.yaml"
            )
    try:
        text = candidate.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read scenario {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_scenario(data, source=str(path))
