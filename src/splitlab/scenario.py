"""Scenario files: the one description of an experiment.

A scenario names the nodes, their links and limits, the model, the data, the
workload, the planning algorithm and the BS scheduler.  It is read from YAML
and validated once, here; every later layer receives the frozen
:class:`Scenario`.  Mistakes are reported with the file, the field's path and
the offending value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
    model_validator,
)

from splitlab.calibration import CLASSES, share_of
from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.usercode import is_onnx_file, is_reference
from splitlab.workload import TaskSpec, generate_tasks

DEFAULT_SCENARIO = "default"

# Presets a device can name with ``class``; their figures and CPU shares are
# in splitlab.calibration.
DeviceClassName = Literal["rpi4", "rpi3", "jetson-nano", "laptop"]

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# A minute of one-way latency and 1 kbit/s are the limits of what a run can
# emulate in reasonable time; beyond them a value is almost surely a typo.
LatencyMs = Annotated[float, Field(ge=0, le=60_000)]
RateMbps = Annotated[float, Field(ge=0.001, le=1_000_000)]
# A position on the testbed's floor plan, ``[x, y]`` in metres.
Coordinate = Annotated[float, Field(ge=-100_000, le=100_000)]
PositionM = tuple[Coordinate, Coordinate]


class _Strict(BaseModel):
    # Strict numbers: ``true`` is not a count and ``.inf`` is not a latency.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, strict=False
    )


class LinkConfig(_Strict):
    """One device's link to the base station."""

    latency_ms: LatencyMs
    rate_mbps: RateMbps
    jitter_ms: LatencyMs = 0.0
    # Packets dropped at random, each direction; only the kernel can drop
    # packets (the netns backend), a TCP stream in the transport cannot.
    loss_percent: Annotated[float, Field(ge=0, le=100)] = 0.0

    def spec(self) -> LinkSpec:
        """The link in SI units."""
        return LinkSpec(
            latency_s=self.latency_ms / 1e3,
            rate_bps=self.rate_mbps * 1e6,
            jitter_s=self.jitter_ms / 1e3,
        )


class LoadConfig(_Strict):
    """Background load on a device, run by ``stress-ng`` inside its limit."""

    # One worker busy this share of the time (``--cpu 1 --cpu-load P``).
    cpu_percent: Annotated[int, Field(ge=0, le=100, strict=True)] = 0
    # One worker holding this much memory (``--vm 1 --vm-bytes M``).
    memory_mb: Annotated[int, Field(ge=0, le=2**20, strict=True)] = 0


class SshConfig(_Strict):
    """How to reach a real board over SSH (backend ``ssh``).

    The host key is checked against ``known_hosts`` unless
    ``host_key_check`` is false.
    """

    host: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^\s]+$")]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] = 22
    user: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$")]
    key: Path
    known_hosts: Path = Path("~/.ssh/known_hosts")
    host_key_check: bool = True
    python: Annotated[str, Field(min_length=1, pattern=r"^[^\s]+$")] = "python3"
    workdir: Annotated[str, Field(min_length=1, pattern=r"^[^\s]+$")] = "~/.splitlab"


class DeviceConfig(_Strict):
    """An end device: its speed, memory and link."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    device_class: DeviceClassName | None = Field(default=None, alias="class")
    cpu_share: Annotated[float, Field(gt=0, le=64)] | None = None
    memory_mb: Annotated[int, Field(gt=0, le=2**30, strict=True)] | None = None
    # Static priority for the priority scheduler: lower runs first.
    priority: Annotated[int, Field(ge=-1000, le=1000, strict=True)] = 0
    # Where the device stands; without a hand-set link, the link is the WiFi
    # link this position implies (splitlab.placement), filled in by Scenario.
    position_m: PositionM | None = None
    # The codec of this device's cut tensor; the scenario's when not given.
    codec: str | None = None
    link: LinkConfig
    load: LoadConfig | None = None
    # The CPUs the device (and its load) may run on; all when omitted.
    cpus: (
        Annotated[
            tuple[Annotated[int, Field(ge=0, le=4095, strict=True)], ...],
            Field(min_length=1, max_length=4096),
        ]
        | None
    ) = None
    # The real board this device is, for backend ssh.
    ssh: SshConfig | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("codec")
    @classmethod
    def _known_device_codec(cls, value: str | None) -> str | None:
        return None if value is None else _known_codec(value)

    @model_validator(mode="after")
    def _needs_speed(self) -> Self:
        if self.device_class is None and self.cpu_share is None:
            raise ValueError("give a device class or a cpu_share")
        return self

    @property
    def share(self) -> float:
        """The share of one core the device is held to.

        An explicit ``cpu_share`` wins; a class's share comes from this
        machine's calibration, measured (or read from its cache) the first
        time a process asks, never while a scenario is validated.
        """
        if self.cpu_share is not None:
            return self.cpu_share
        assert self.device_class is not None
        return share_of(self.device_class)

    @property
    def memory_bytes(self) -> int:
        """The device's memory."""
        if self.memory_mb is not None:
            return self.memory_mb * 2**20
        if self.device_class is not None:
            return CLASSES[self.device_class].memory_mb * 2**20
        return 4096 * 2**20


class BaseStationConfig(_Strict):
    """The base station: how many tasks it serves at once."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "bs"
    workers: Annotated[int, Field(ge=1, le=64, strict=True)] = 1
    threads: Annotated[int, Field(ge=1, le=64, strict=True)] = 1
    # Where the BS stands; [0, 0] when not given.
    position_m: PositionM | None = None
    # The address real boards reach the BS at (backend ssh); by default the
    # address this machine uses on its route to the first board.
    address: IPvAnyAddress | None = None


class DataConfig(_Strict):
    """Where the input samples come from."""

    dataset: Literal["mnist", "cifar10", "sentences"] = "mnist"
    dir: Path | None = None

    @model_validator(mode="after")
    def _cifar_needs_dir(self) -> Self:
        if self.dataset == "cifar10" and self.dir is None:
            raise ValueError("dataset cifar10 needs 'dir', the local CIFAR-10 folder")
        return self


class ReplanConfig(_Strict):
    """When the station plans anew during a run (off unless given)."""

    threshold: Annotated[float, Field(gt=0, le=100)] = 0.5
    window: Annotated[int, Field(ge=1, le=1000, strict=True)] = 5


class WorkloadConfig(_Strict):
    """How many tasks each device generates, and when."""

    tasks_per_device: Annotated[int, Field(ge=1, le=100_000, strict=True)] = 20
    period_ms: Annotated[float, Field(gt=0, le=3_600_000)] = 250.0
    arrivals: Literal["periodic", "poisson"] = "periodic"
    # Each task must finish within this long of its arrival; the edf
    # scheduler orders by it, and summaries count the misses.
    deadline_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = None


class ProfilingConfig(_Strict):
    """How stages are timed."""

    warmup: Annotated[int, Field(ge=0, le=1000, strict=True)] = 5
    repeats: Annotated[int, Field(ge=1, le=10_000, strict=True)] = 20


class MonitoringConfig(_Strict):
    """How often every node's CPU, memory and RTT are sampled during a run.

    ``monitoring: off`` in a scenario turns sampling off.
    """

    enabled: bool = True
    interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 1.0


class TrainingConfig(_Strict):
    """How the bundled model's weights are trained when none are cached."""

    epochs: Annotated[int, Field(ge=1, le=100, strict=True)] = 2
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2


class Scenario(_Strict):
    """A whole experiment, validated."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    seed: Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)] = 1
    backend: Literal["local", "netns", "ssh"] = "local"
    model: str = "alexnet"
    # Trained weights for a user model (safetensors or a state dict file),
    # used instead of training it.
    weights: Path | None = None
    # How every device encodes its cut tensor (see splitlab.codec).
    codec: str = "fp32"
    data: DataConfig = DataConfig()
    workload: WorkloadConfig = WorkloadConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    training: TrainingConfig = TrainingConfig()
    replan: ReplanConfig | None = None
    monitoring: MonitoringConfig = MonitoringConfig()
    algorithm: str = "greedy"
    # What the algorithm minimises: the total (mean) delay, the delay
    # variance across tasks (fairness) or the largest delay.
    objective: Literal["total", "variance", "max"] = "total"
    scheduler: str = "fcfs"
    base_station: BaseStationConfig = BaseStationConfig()
    devices: Annotated[tuple[DeviceConfig, ...], Field(min_length=1, max_length=256)]

    @model_validator(mode="before")
    @classmethod
    def _links_from_positions(cls, data: Any) -> Any:
        return derive_links(data)

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

    @field_validator("monitoring", mode="before")
    @classmethod
    def _monitoring_switch(cls, value: object) -> object:
        # YAML reads `off` and `on` as booleans.
        if isinstance(value, bool):
            return {"enabled": value}
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from splitlab.models import MODELS

        # A user model (file.py:factory) is imported where the model is built.
        if value not in MODELS and is_reference(value):
            return value
        if is_onnx_file(value):
            if not Path(value).is_file():
                raise ValueError(f"ONNX model file {value} does not exist")
            return value
        return _known("model", value, MODELS)

    @field_validator("codec")
    @classmethod
    def _known_scenario_codec(cls, value: str) -> str:
        return _known_codec(value)

    @model_validator(mode="after")
    def _weights_for_user_model(self) -> Self:
        if self.weights is not None and not is_reference(self.model):
            raise ValueError(
                f"weights are for a user model (FILE.py:FACTORY); model "
                f"{self.model!r} is trained by splitlab"
            )
        return self

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        from splitlab.plan import ALGORITHMS, is_algorithm_reference

        # A user algorithm (file.py:name, entrypoint:NAME) is loaded where the
        # plan is made, on the BS, not where the scenario is read.
        if is_algorithm_reference(value):
            return value
        return _known("algorithm", value, ALGORITHMS)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        from splitlab.schedule import SCHEDULERS

        return _known("scheduler", value, SCHEDULERS)

    @model_validator(mode="after")
    def _model_takes_data(self) -> Self:
        from splitlab.models import MODELS

        info = MODELS.get(self.model)
        wanted = None if info is None else info.dataset
        if wanted == "prompts":
            raise ValueError(
                f"model {self.model!r} generates text: run it with 'splitlab "
                "generate', not in a scenario"
            )
        if wanted is not None and self.data.dataset != wanted:
            raise ValueError(
                f"model {self.model!r} takes data set {wanted!r}, not "
                f"{self.data.dataset!r}"
            )
        if wanted is None and self.data.dataset == "sentences":
            raise ValueError(
                f"data set 'sentences' is text; model {self.model!r} takes images"
            )
        return self

    @model_validator(mode="after")
    def _loss_needs_kernel(self) -> Self:
        if self.backend != "local":
            return self
        for index, device in enumerate(self.devices):
            if device.link.loss_percent > 0:
                raise ValueError(
                    f"devices[{index}].link.loss_percent is "
                    f"{device.link.loss_percent:g}, but the local backend cannot "
                    "drop packets of a TCP stream; use backend netns"
                )
        return self

    @model_validator(mode="after")
    def _distinct_base_station(self) -> Self:
        if self.base_station.name in {device.name for device in self.devices}:
            raise ValueError(
                f"base station name {self.base_station.name!r} is also a device name"
            )
        return self

    @model_validator(mode="after")
    def _boards_for_ssh(self) -> Self:
        if self.backend != "ssh":
            return self
        boards: dict[tuple[str, int], str] = {}
        for index, device in enumerate(self.devices):
            if device.ssh is None:
                raise ValueError(
                    f"backend 'ssh' needs devices[{index}].ssh (host, user, key) "
                    f"for device {device.name!r}"
                )
            board = (device.ssh.host, device.ssh.port)
            if board in boards:
                raise ValueError(
                    f"devices {boards[board]!r} and {device.name!r} name the same "
                    f"board {device.ssh.host}:{device.ssh.port}; one device a board"
                )
            boards[board] = device.name
        return self

    def device_codec(self, device: str) -> str:
        """The codec ``device`` sends its cut tensor with."""
        config = next(d for d in self.devices if d.name == device)
        return config.codec or self.codec

    def with_codec(self, codec: str) -> Scenario:
        """A copy in which every device uses ``codec`` (``run --codec``)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["codec"] = codec
        for device in data["devices"]:
            device.pop("codec", None)
        return parse_scenario(data, source="command line")

    def to_yaml(self) -> str:
        """The scenario as YAML that :func:`parse_scenario` reads back."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)

    def tasks(self, *, num_samples: int) -> tuple[TaskSpec, ...]:
        """The scenario's workload: every device's tasks, seeded."""
        workload = self.workload
        return generate_tasks(
            [device.name for device in self.devices],
            tasks_per_device=workload.tasks_per_device,
            period_s=workload.period_ms / 1e3,
            arrivals=workload.arrivals,
            num_samples=num_samples,
            seed=self.seed,
            relative_deadline_s=(
                None if workload.deadline_ms is None else workload.deadline_ms / 1e3
            ),
        )

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


def derive_links(data: Any) -> Any:
    """Fill in the link of every placed device that has none.

    ``data`` is a scenario as parsed YAML; a device with ``position_m`` and
    no ``link`` gets the WiFi link of its distance to the base station's
    ``position_m`` (``[0, 0]`` by default).  A hand-set link is kept.  Data
    that is not well formed is returned unchanged for validation to report.

    Raises
    ------
    ValueError
        If a placed device is out of the base station's WiFi range.
    """
    from splitlab.placement import link_fields

    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        return data
    station = data.get("base_station")
    origin = station.get("position_m") if isinstance(station, dict) else None
    if origin is None:
        origin = [0.0, 0.0]
    if not _is_position(origin):
        return data
    devices = []
    for index, device in enumerate(data["devices"]):
        if (
            isinstance(device, dict)
            and "link" not in device
            and _is_position(device.get("position_m"))
        ):
            try:
                link = link_fields(
                    device["position_m"], origin, name=f"devices[{index}]"
                )
            except ConfigError as error:
                raise ValueError(str(error)) from None
            devices.append({**device, "link": link})
        else:
            devices.append(device)
    return {**data, "devices": devices}


def _is_position(value: object) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= 100_000
            for v in value
        )
    )


def _known_codec(value: str) -> str:
    from splitlab.codec import CODECS

    if value not in CODECS:
        raise ValueError(f"unknown codec {value!r}; known: {', '.join(CODECS)}")
    return value


def _known(field: str, value: str, known: Mapping[str, object]) -> str:
    # Registries import torch and the planner: the validators import them
    # lazily so that reading a scenario stays cheap until it gets this far.
    if value not in known:
        raise ValueError(
            f"unknown {field} {value!r}; known: {', '.join(sorted(known))}"
        )
    return value


# How much of a wrong value an error message shows.
_SHOWN_CHARS = 60


def _describe(error: ValidationError, source: str) -> str:
    # An unknown key explains the other problems it causes (a misspelt key is
    # also a missing one), so it is named first.
    errors = error.errors()
    # A list that is too short only because one of its items failed says
    # nothing the item's own error does not.
    errors = [
        e
        for e in errors
        if e["type"] != "too_short"
        or not any(
            other is not e and other["loc"][: len(e["loc"])] == e["loc"]
            for other in errors
        )
    ]
    problems = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")
    first = problems[0]
    location = ""
    for part in first["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            # A key with a newline or other control character is shown quoted,
            # so the message stays on one line.
            location += f".{part}" if part.isprintable() else f".{part!r}"
    location = location.lstrip(".") or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    text = f"{source}: {location}: {message}"
    if first["type"] != "missing" and not location.startswith("(top"):
        shown = repr(first["input"])
        if len(shown) > _SHOWN_CHARS:
            shown = shown[: _SHOWN_CHARS - 3] + "..."
        text += f" (got {shown})"
    more = len(problems) - 1
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


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what and where."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


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
        text = candidate.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read scenario {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    return parse_scenario(data, source=str(path))
