"""Partitioning algorithms: choose every device's cut, and predict what it costs.

Planning is pure.  A :class:`PlanningProblem` holds the profiles, links,
workload, BS scheduler and memory limits; an algorithm maps it to a cut per
device; :func:`make_plan` checks that scheme and fills in the predicted
timeline of every task with :func:`splitlab.simulate.simulate`.

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
``greedy``
    Contention-aware local search: from the ``neurosurgeon`` cuts, apply the
    single change of one device's cut that lowers the simulated total delay
    the most, until no change lowers it.

Every algorithm only proposes cuts the device can hold: ``k = 0``, or a ``k``
whose head weights fit in the device's memory.  Delays within
:data:`EQUAL_S` of each other count as equal, so float rounding never
decides a tie; ties go to the larger cut, then to the device first by name.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, SupportsIndex

from splitlab.errors import ConfigError
from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile
from splitlab.schedule import make_scheduler
from splitlab.simulate import TaskPrediction, simulate
from splitlab.workload import TaskSpec

__all__ = [
    "ALGORITHMS",
    "EQUAL_S",
    "Algorithm",
    "GreedyAlgorithm",
    "LocalOnlyAlgorithm",
    "NeurosurgeonAlgorithm",
    "OffloadAllAlgorithm",
    "Plan",
    "PlanningProblem",
    "list_algorithms",
    "make_plan",
]

logger = logging.getLogger(__name__)

EQUAL_S = 1e-9
"""Delays closer than this many seconds are treated as equal."""


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
        Memory each device can give to the weights of its head; a cut
        ``k > 0`` is allowed only if ``head_param_bytes(k)`` fits.

    Raises
    ------
    ConfigError
        If there are no tasks, a task's device has no profile, a device has
        no link or memory figure, a profile's stage count differs from the
        BS's, a link's rate is not positive, a memory figure is negative,
        ``workers`` is below one or the scheduler is unknown.
    """

    device_profiles: Mapping[str, NodeProfile]
    bs_profile: NodeProfile
    links: Mapping[str, LinkSpec]
    tasks: tuple[TaskSpec, ...]
    scheduler: str
    workers: int
    device_memory_bytes: Mapping[str, int]

    def __post_init__(self) -> None:
        """Freeze the mappings and check that the problem is consistent."""
        for name in ("device_profiles", "links", "device_memory_bytes"):
            frozen = MappingProxyType(dict(getattr(self, name)))
            object.__setattr__(self, name, frozen)
        object.__setattr__(self, "tasks", tuple(self.tasks))

        make_scheduler(self.scheduler)
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
            if cut == 0 or profile.head_param_bytes(cut) <= memory_bytes
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


def _total_delay_s(predictions: tuple[TaskPrediction, ...]) -> float:
    return sum(prediction.delay_s for prediction in predictions)


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
        """Give each device the allowed cut with the least idle-system delay."""
        cuts: dict[str, int] = {}
        for device in problem.devices:
            profile = problem.device_profiles[device]
            link = problem.links[device]
            best_cut, best_s = -1, float("inf")
            # From the largest cut down, so a tie keeps the larger cut.
            for cut in reversed(problem.allowed_cuts(device)):
                delay_s = profile.head_s(cut)
                if cut < problem.num_stages:
                    delay_s += link.transfer_s(profile.cut_bytes(cut))
                    delay_s += problem.bs_profile.tail_s(cut)
                if delay_s < best_s - EQUAL_S:
                    best_cut, best_s = cut, delay_s
            cuts[device] = best_cut
        return cuts


class GreedyAlgorithm:
    """Contention-aware local search over single-device cut changes."""

    name = "greedy"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Improve the neurosurgeon cuts one device at a time.

        Every round simulates each allowed change of one device's cut and
        applies the one that lowers the total delay the most; the search
        stops when no change lowers it by more than :data:`EQUAL_S`.  The
        total strictly decreases, so no scheme is visited twice and the
        search ends.  A round costs one simulation of the whole workload per
        allowed cut of every device with tasks, about ``N * L``.
        """
        cuts = NeurosurgeonAlgorithm()(problem)
        total_s = _total_delay_s(problem.predict(cuts))
        # Cuts of a device without tasks change no delay.
        busy = sorted({task.device for task in problem.tasks})

        while True:
            best_move: tuple[str, int] | None = None
            best_total_s = total_s
            for device in busy:
                for cut in reversed(problem.allowed_cuts(device)):
                    if cut == cuts[device]:
                        continue
                    trial_s = _total_delay_s(problem.predict({**cuts, device: cut}))
                    if trial_s < best_total_s - EQUAL_S:
                        best_move, best_total_s = (device, cut), trial_s
            if best_move is None:
                return cuts
            device, cut = best_move
            logger.debug(
                "greedy: device %s cut %d -> %d, total delay %.6f s -> %.6f s",
                device,
                cuts[device],
                cut,
                total_s,
                best_total_s,
            )
            cuts[device] = cut
            total_s = best_total_s


ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType(
    {
        algorithm.name: algorithm
        for algorithm in (
            LocalOnlyAlgorithm(),
            OffloadAllAlgorithm(),
            NeurosurgeonAlgorithm(),
            GreedyAlgorithm(),
        )
    }
)
"""Every bundled algorithm by its name."""


def list_algorithms() -> tuple[str, ...]:
    """The names of the bundled algorithms, sorted."""
    return tuple(sorted(ALGORITHMS))


def make_plan(algorithm: str | Algorithm, problem: PlanningProblem) -> Plan:
    """Run an algorithm, check its cuts, and predict every task's timeline.

    Parameters
    ----------
    algorithm:
        A name from :data:`ALGORITHMS`, or any object following
        :class:`Algorithm` (a user-supplied algorithm).
    problem:
        The problem to plan.

    Returns
    -------
    Plan
        The cuts, sorted by device name, and the predictions under them.

    Raises
    ------
    ConfigError
        If the name is unknown, or the algorithm leaves a device without a
        cut, names an unknown device, gives a cut that is not an integer in
        ``0..L``, or a cut whose head weights do not fit in the device's
        memory.
    """
    if isinstance(algorithm, str):
        try:
            algorithm = ALGORITHMS[algorithm]
        except KeyError:
            known = ", ".join(list_algorithms())
            raise ConfigError(
                f"unknown algorithm {algorithm!r}; known: {known}"
            ) from None

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
        need_bytes = problem.device_profiles[device].head_param_bytes(cut)
        have_bytes = problem.device_memory_bytes[device]
        if cut > 0 and need_bytes > have_bytes:
            raise ConfigError(
                f"algorithm {name!r} gave device {device!r} cut {cut}, whose head "
                f"weights need {need_bytes} bytes but device_memory_bytes is "
                f"{have_bytes}"
            )
        cuts[device] = cut
    return MappingProxyType(cuts)
