"""Partitioning algorithms: choose every device's cut, and predict what it costs.

Planning is pure.  A :class:`PlanningProblem` holds the profiles, links,
workload, BS scheduler, memory limits and the objective; an algorithm maps it
to a cut per device; :func:`make_plan` checks that scheme and fills in the
predicted timeline of every task with :func:`splitlab.simulate.simulate`.

Algorithms
----------
``local-only``
    Every device runs the whole model (``k = L``).
``offload-all``
    Every device sends its input to the BS (``k = 0``).
``neurosurgeon``
    Each device on its own takes the cut with the least delay on an idle BS
    and an idle link: ``head_s(k) + latency + s(k) * 8 / R + bs.tail_s(k)``
    (``head_s(L)`` for ``k = L``, which never uses the link).  It ignores
    the other devices, hence contention at the BS and queueing.
``greedy``, ``trend``, ``annealing``, ``genetic``, ``exact``
    Contention-aware: they simulate the BS and minimise the problem's
    objective (total delay, delay variance or maximum delay).  They live in
    :mod:`splitlab.search`.

A user algorithm is a Python file or an entry point, named by a reference
that :func:`load_algorithm` resolves (``path/to/file.py:name`` or
``entrypoint:NAME``); :func:`make_plan` accepts such a reference wherever it
accepts a registry name.  The file is ordinary Python run with the rights of
the process that plans (the base station): it is trusted code that the user
chose, and must never come from a peer.

Every algorithm only proposes cuts the device can hold: ``k = 0``, or a ``k``
whose head weights and peak activations fit in the device's memory together
(:meth:`splitlab.profile.NodeProfile.head_memory_bytes`).  Delays within
:data:`EQUAL_S` of each other count as equal, so float rounding never
decides a tie; ties go to the larger cut, then to the device first by name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, SupportsIndex

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile
from splitlab.schedule import make_scheduler
from splitlab.search import (
    EQUAL_S,
    OBJECTIVES,
    AnnealingAlgorithm,
    ExactAlgorithm,
    GeneticAlgorithm,
    GreedyAlgorithm,
    Objective,
    TrendAlgorithm,
    contention_free_cuts,
    objective_value,
)
from splitlab.simulate import TaskPrediction, simulate
from splitlab.usercode import import_file, is_reference
from splitlab.workload import TaskSpec

__all__ = [
    "ALGORITHMS",
    "ENTRY_POINT_GROUP",
    "EQUAL_S",
    "OBJECTIVES",
    "Algorithm",
    "AnnealingAlgorithm",
    "ExactAlgorithm",
    "GeneticAlgorithm",
    "GreedyAlgorithm",
    "LocalOnlyAlgorithm",
    "NeurosurgeonAlgorithm",
    "Objective",
    "OffloadAllAlgorithm",
    "Plan",
    "PlanningProblem",
    "TrendAlgorithm",
    "is_algorithm_reference",
    "list_algorithms",
    "load_algorithm",
    "make_plan",
    "objective_value",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "splitlab.algorithms"
"""The entry-point group that ``entrypoint:NAME`` references look in."""


@dataclass(frozen=True)
class PlanningProblem:
    """Everything a partitioning algorithm may look at.

    The mappings are copied into read-only views when the problem is built,
    and the problem is checked once, here.

    Attributes
    ----------
    device_profiles:
        Each device's profile of the model, by device name.  These names are
        the devices of the problem.
    bs_profile:
        The base station's profile of the same model; it sets ``L``.
    links:
        Each device's link to the BS.
    tasks:
        The workload every device generates.
    scheduler:
        The BS scheduler's name (see :data:`splitlab.schedule.SCHEDULERS`).
    workers:
        How many stages the BS runs at the same time.
    device_memory_bytes:
        Memory each device can give to its head; a cut ``k > 0`` is allowed
        only if the head's weights plus its peak activation memory
        (``head_memory_bytes(k)`` of the device's profile) fit.
    objective:
        What the contention-aware algorithms minimise over the task delays:
        ``total`` (the sum, i.e. the mean times the task count), ``variance``
        (across tasks, for fairness) or ``max``.  See
        :func:`splitlab.search.objective_value`.
    seed:
        Seeds the randomised algorithms (``annealing``, ``genetic``).
    priorities:
        Each device's static priority for the ``priority`` scheduler (lower
        runs first); a device left out has priority 0.

    Raises
    ------
    ConfigError
        If there are no tasks, a task's device has no profile, a device has
        no link or memory figure, a profile's stage count differs from the
        BS's, a link's rate is not positive, a memory figure is negative,
        ``workers`` is below one, or the scheduler or objective is unknown.
    """

    device_profiles: Mapping[str, NodeProfile]
    bs_profile: NodeProfile
    links: Mapping[str, LinkSpec]
    tasks: tuple[TaskSpec, ...]
    scheduler: str
    workers: int
    device_memory_bytes: Mapping[str, int]
    objective: Objective = "total"
    seed: int = 0
    priorities: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Freeze the mappings and check that the problem is consistent."""
        for name in ("device_profiles", "links", "device_memory_bytes", "priorities"):
            frozen = MappingProxyType(dict(getattr(self, name)))
            object.__setattr__(self, name, frozen)
        object.__setattr__(self, "tasks", tuple(self.tasks))

        make_scheduler(self.scheduler)
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}"
            )
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if not self.tasks:
            raise ConfigError("the planning problem has no tasks")
        for task in self.tasks:
            if task.device not in self.device_profiles:
                raise ConfigError(
                    f"task {task.task_id} comes from device {task.device!r}, "
                    "which has no profile"
                )

        num_stages = self.bs_profile.num_stages
        for device, profile in self.device_profiles.items():
            if profile.num_stages != num_stages:
                raise ConfigError(
                    f"device {device!r} profile has {profile.num_stages} stages, "
                    f"the BS profile has {num_stages}"
                )
            if device not in self.links:
                raise ConfigError(f"device {device!r} has no link")
            if self.links[device].rate_bps <= 0:
                raise ConfigError(
                    f"device {device!r} link rate_bps must be positive, "
                    f"got {self.links[device].rate_bps}"
                )
            if device not in self.device_memory_bytes:
                raise ConfigError(f"device {device!r} has no device_memory_bytes")
            if self.device_memory_bytes[device] < 0:
                raise ConfigError(
                    f"device {device!r} device_memory_bytes must not be negative, "
                    f"got {self.device_memory_bytes[device]}"
                )

    @property
    def num_stages(self) -> int:
        """``L``, the number of stages of the model."""
        return self.bs_profile.num_stages

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices' names, sorted."""
        return tuple(sorted(self.device_profiles))

    def allowed_cuts(self, device: str) -> tuple[int, ...]:
        """The cuts ``device`` can hold in its memory, in increasing order.

        ``k = 0`` is always allowed: the device then holds no weights.
        """
        profile = self.device_profiles[device]
        memory_bytes = self.device_memory_bytes[device]
        return tuple(
            cut
            for cut in range(self.num_stages + 1)
            if cut == 0 or profile.head_memory_bytes(cut) <= memory_bytes
        )

    def predict(self, cuts: Mapping[str, int]) -> tuple[TaskPrediction, ...]:
        """Simulate every task of the problem under ``cuts``.

        See :func:`splitlab.simulate.simulate`; the cuts are not checked
        against the memory limits here (:func:`make_plan` does that).
        """
        return simulate(
            self.tasks,
            cuts=cuts,
            device_profiles=self.device_profiles,
            bs_profile=self.bs_profile,
            links=self.links,
            scheduler=self.scheduler,
            workers=self.workers,
            priorities=self.priorities,
        )


@dataclass(frozen=True)
class Plan:
    """A scheme and the predicted timeline of every task under it.

    Attributes
    ----------
    algorithm:
        The name of the algorithm that chose the cuts.
    cuts:
        The cut ``k`` of every device, by device name.
    predictions:
        One prediction per task, sorted by ``task_id``.
    """

    algorithm: str
    cuts: Mapping[str, int]
    predictions: tuple[TaskPrediction, ...]

    @property
    def total_delay_s(self) -> float:
        """Sum of every task's delay, in seconds."""
        return sum(prediction.delay_s for prediction in self.predictions)

    @property
    def mean_delay_s(self) -> float:
        """Mean delay over every task, in seconds (0 without tasks)."""
        if not self.predictions:
            return 0.0
        return self.total_delay_s / len(self.predictions)

    @property
    def max_delay_s(self) -> float:
        """The largest delay of any task, in seconds (0 without tasks)."""
        return max((prediction.delay_s for prediction in self.predictions), default=0.0)

    @property
    def delay_variance_s2(self) -> float:
        """Population variance of the task delays, in s^2 (0 without tasks)."""
        return self.objective_value("variance")

    def objective_value(self, objective: Objective) -> float:
        """The plan's figure for ``objective`` (see :func:`objective_value`)."""
        return objective_value([p.delay_s for p in self.predictions], objective)

    @property
    def mean_delay_by_device_s(self) -> Mapping[str, float]:
        """Mean delay of each device's tasks, in seconds, by device name.

        Devices without tasks are left out.
        """
        delays: dict[str, list[float]] = {}
        for prediction in self.predictions:
            delays.setdefault(prediction.device, []).append(prediction.delay_s)
        return MappingProxyType(
            {
                device: sum(values) / len(values)
                for device, values in sorted(delays.items())
            }
        )


class Algorithm(Protocol):
    """A partitioning algorithm: a named function from a problem to cuts."""

    @property
    def name(self) -> str:
        """The algorithm's registry name."""
        ...

    def __call__(self, problem: PlanningProblem, /) -> dict[str, int]:
        """Choose the cut ``k`` of every device of ``problem``."""
        ...


class FixedScheme:
    """A scheme given by hand: the same cuts whatever the problem.

    :func:`make_plan` checks the cuts like any algorithm's and simulates them,
    so a hand-made or stored scheme gets its predicted delays.
    """

    def __init__(self, cuts: Mapping[str, int], *, name: str = "given cuts") -> None:
        self.cuts = dict(cuts)
        self.name = name

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Return the given cuts."""
        return dict(self.cuts)


class LocalOnlyAlgorithm:
    """Every device runs the whole model: ``k = L``."""

    name = "local-only"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Give every device the cut ``L``."""
        return dict.fromkeys(problem.devices, problem.num_stages)


class OffloadAllAlgorithm:
    """Every device sends its raw input to the BS: ``k = 0``."""

    name = "offload-all"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Give every device the cut 0."""
        return dict.fromkeys(problem.devices, 0)


class NeurosurgeonAlgorithm:
    """Per-device best cut on an idle BS and link, blind to contention."""

    name = "neurosurgeon"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Give each device the allowed cut with the least idle-system delay.

        See :func:`splitlab.search.contention_free_cuts`.
        """
        return contention_free_cuts(problem)


ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType(
    {
        algorithm.name: algorithm
        for algorithm in (
            LocalOnlyAlgorithm(),
            OffloadAllAlgorithm(),
            NeurosurgeonAlgorithm(),
            GreedyAlgorithm(),
            TrendAlgorithm(),
            AnnealingAlgorithm(),
            GeneticAlgorithm(),
            ExactAlgorithm(),
        )
    }
)
"""Every bundled algorithm by its name."""


def list_algorithms() -> tuple[str, ...]:
    """The names of the bundled algorithms, sorted."""
    return tuple(sorted(ALGORITHMS))


def is_algorithm_reference(text: str) -> bool:
    """Whether ``text`` names a user algorithm rather than a registry entry.

    A reference holds a colon: ``path/to/file.py:name`` or
    ``entrypoint:NAME``.  Only its form is checked; the file or entry point
    is looked up by :func:`load_algorithm`.
    """
    return is_reference(text)


class _UserAlgorithm:
    """A user's callable behind the :class:`Algorithm` interface.

    Its name is the reference it was loaded from, so a plan records where its
    cuts came from.  An exception from the user's code becomes a
    :class:`ConfigError` that names the reference.
    """

    def __init__(self, name: str, function: object) -> None:
        self.name = name
        self._function = function

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Run the user's code and return its cuts, unchecked."""
        assert callable(self._function)
        try:
            cuts = self._function(problem)
        except Exception as error:
            raise ConfigError(
                f"algorithm {self.name!r} raised {type(error).__name__}: {error}"
            ) from error
        if not isinstance(cuts, Mapping):
            raise ConfigError(
                f"algorithm {self.name!r} returned {type(cuts).__name__}, "
                "not a mapping from device name to cut"
            )
        return dict(cuts)


def load_algorithm(reference: str) -> Algorithm:
    """Find the algorithm a registry name or a user reference names.

    Parameters
    ----------
    reference:
        A name from :data:`ALGORITHMS`; ``path/to/file.py:name``, where
        ``name`` is a class (built with no arguments) whose instances take
        the problem, or a function taking the problem, returning a mapping
        from device name to cut; or ``entrypoint:NAME``, an entry point of
        that name in the :data:`ENTRY_POINT_GROUP` group, loading to such a
        class or function.

    Returns
    -------
    Algorithm
        The registry's instance, or the user's callable wrapped so that its
        name is ``reference``.

    Raises
    ------
    ConfigError
        If the name is unknown, the file or entry point does not exist,
        importing it raises (the message names the file and the exception),
        the attribute is missing, or it is not callable.

    Notes
    -----
    A file reference is imported with :mod:`importlib` and runs as ordinary
    Python with this process's rights: the file is trusted code the user
    put on the planning machine.  Nothing received from a device or the
    network is ever loaded here.
    """
    if reference in ALGORITHMS:
        return ALGORITHMS[reference]
    if not is_algorithm_reference(reference):
        known = ", ".join(list_algorithms())
        raise ConfigError(
            f"unknown algorithm {reference!r}; known: {known}, or a reference "
            "path/to/file.py:name or entrypoint:NAME"
        )

    source, _, attribute = reference.rpartition(":")
    if source == "entrypoint":
        target = _load_entry_point(attribute)
    else:
        target = getattr(import_file(Path(source)), attribute, _MISSING)
        if target is _MISSING:
            raise ConfigError(f"algorithm file {source} has no attribute {attribute!r}")

    if inspect.isclass(target):
        try:
            target = target()
        except Exception as error:
            raise ConfigError(
                f"algorithm {reference!r}: building class {attribute} raised "
                f"{type(error).__name__}: {error}"
            ) from error
    if not callable(target):
        raise ConfigError(
            f"algorithm {reference!r} is a {type(target).__name__}, not callable; "
            "give a function or a class taking the planning problem"
        )
    logger.info("loaded user algorithm %s", reference)
    return _UserAlgorithm(reference, target)


_MISSING = object()


def _load_entry_point(name: str) -> object:
    """Load the entry point ``name`` of the :data:`ENTRY_POINT_GROUP` group."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    matches = [entry for entry in found if entry.name == name]
    if not matches:
        known = ", ".join(sorted(entry.name for entry in found)) or "none"
        raise ConfigError(
            f"no entry point {name!r} in group {ENTRY_POINT_GROUP}; installed: {known}"
        )
    entry = matches[0]
    try:
        return entry.load()
    except Exception as error:
        raise ConfigError(
            f"entry point {name!r} ({entry.value}) raised {type(error).__name__} "
            f"while loading: {error}"
        ) from error


def make_plan(algorithm: str | Algorithm, problem: PlanningProblem) -> Plan:
    """Run an algorithm, check its cuts, and predict every task's timeline.

    Parameters
    ----------
    algorithm:
        A name from :data:`ALGORITHMS`, a user reference that
        :func:`load_algorithm` resolves, or any object following
        :class:`Algorithm`.
    problem:
        The problem to plan.

    Returns
    -------
    Plan
        The cuts, sorted by device name, and the predictions under them.

    Raises
    ------
    ConfigError
        If the algorithm cannot be loaded or raises, or it leaves a device
        without a cut, names an unknown device, gives a cut that is not an
        integer in ``0..L``, or a cut whose head weights do not fit in the
        device's memory.
    """
    if isinstance(algorithm, str):
        algorithm = load_algorithm(algorithm)

    cuts = _checked_cuts(algorithm.name, algorithm(problem), problem)
    logger.debug("algorithm %s chose cuts %s", algorithm.name, dict(cuts))
    return Plan(
        algorithm=algorithm.name,
        cuts=cuts,
        predictions=problem.predict(cuts),
    )


def _checked_cuts(
    name: str, proposed: Mapping[str, object], problem: PlanningProblem
) -> Mapping[str, int]:
    """Refuse a scheme the problem cannot run; return it frozen and sorted."""
    unknown = sorted(set(proposed) - set(problem.devices))
    if unknown:
        raise ConfigError(
            f"algorithm {name!r} gave cuts for unknown devices {unknown}; "
            f"the devices are {list(problem.devices)}"
        )

    cuts: dict[str, int] = {}
    for device in problem.devices:
        if device not in proposed:
            raise ConfigError(f"algorithm {name!r} gave no cut for device {device!r}")
        raw = proposed[device]
        if isinstance(raw, bool) or not isinstance(raw, SupportsIndex):
            raise ConfigError(
                f"algorithm {name!r} gave device {device!r} cut {raw!r}, "
                "which is not an integer"
            )
        cut = operator.index(raw)
        if not 0 <= cut <= problem.num_stages:
            raise ConfigError(
                f"algorithm {name!r} gave device {device!r} cut {cut}, "
                f"outside 0..{problem.num_stages}"
            )
        profile = problem.device_profiles[device]
        need_bytes = profile.head_memory_bytes(cut)
        have_bytes = problem.device_memory_bytes[device]
        if cut > 0 and need_bytes > have_bytes:
            raise ConfigError(
                f"algorithm {name!r} gave device {device!r} cut {cut}, whose head "
                f"needs {need_bytes} bytes (weights {profile.head_param_bytes(cut)}"
                f", peak activations {profile.head_peak_activation_bytes(cut)}) "
                f"but device_memory_bytes is {have_bytes}"
            )
        cuts[device] = cut
    return MappingProxyType(cuts)
