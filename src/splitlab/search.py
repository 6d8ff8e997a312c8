"""Contention-aware search for a scheme: the algorithms that simulate the BS.

Every algorithm here treats the scheme as a vector of cuts, one per device
that has tasks, and scores a vector by simulating the whole workload with
:func:`splitlab.simulate.simulate` and reducing the task delays to the
problem's objective (:func:`objective_value`).  Devices without tasks keep
their contention-free best cut, which changes no delay.  Every candidate cut
is one the device can hold (:meth:`PlanningProblem.allowed_cuts`), and the
algorithms are deterministic: the random ones draw from ``random.Random``
seeded by the problem's ``seed`` (or their own ``seed`` parameter).

``greedy``
    Best-improvement coordinate descent from the contention-free cuts.
``trend``
    Per device, walk the cut in the improving direction until the objective
    stops falling; sweep the devices until a sweep changes nothing.
``annealing``
    Simulated annealing over the cut vector, geometric cooling.
``genetic``
    A genetic algorithm: tournament selection, uniform crossover, mutation
    and elitism.
``exact``
    Branch and bound over devices, or exhaustive enumeration where no valid
    bound is known; proves the optimum for small instances.

The registry and :func:`splitlab.plan.make_plan` live in
:mod:`splitlab.plan`; this module only imports the planning records for
type checking, so that :mod:`splitlab.plan` can import it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, get_args

from splitlab.errors import ConfigError
from splitlab.simulate import simulate

if TYPE_CHECKING:
    from splitlab.plan import PlanningProblem
    from splitlab.workload import TaskSpec

__all__ = [
    "EQUAL_S",
    "OBJECTIVES",
    "AnnealingAlgorithm",
    "ExactAlgorithm",
    "GeneticAlgorithm",
    "GreedyAlgorithm",
    "Objective",
    "TrendAlgorithm",
    "contention_free_cuts",
    "objective_value",
]

logger = logging.getLogger(__name__)

EQUAL_S: Final = 1e-9
"""Objective values closer than this count as equal (seconds, or s^2)."""

Objective = Literal["total", "variance", "max"]
"""What a contention-aware algorithm minimises over the task delays."""

OBJECTIVES: Final[tuple[Objective, ...]] = get_args(Objective)
"""Every objective's name."""


def objective_value(delays_s: Sequence[float], objective: Objective) -> float:
    """Reduce the task delays to one figure to minimise.

    Parameters
    ----------
    delays_s:
        Every task's delay, in seconds.
    objective:
        ``total``: the sum, in seconds (the mean times the task count);
        ``variance``: the population variance across tasks, in s^2 (fairness);
        ``max``: the largest delay, in seconds.

    Returns
    -------
    float
        The figure; 0 without delays.
    """
    if not delays_s:
        return 0.0
    if objective == "total":
        return math.fsum(delays_s)
    if objective == "max":
        return max(delays_s)
    mean_s = math.fsum(delays_s) / len(delays_s)
    return math.fsum((delay_s - mean_s) ** 2 for delay_s in delays_s) / len(delays_s)


def contention_free_cuts(problem: PlanningProblem) -> dict[str, int]:
    """Each device's allowed cut with the least delay on an idle BS and link.

    The delay of a cut is ``head_s(k) + latency + s(k) * 8 / R + tail_s(k)``
    (``head_s(L)`` alone for ``k = L``).  Ties go to the larger cut.
    """
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


class _Scorer:
    """The objective of cut vectors over the devices with tasks, memoised.

    A vector gives the cut of each device of :attr:`busy`, in that order.
    """

    def __init__(self, problem: PlanningProblem) -> None:
        self.problem = problem
        self.start = contention_free_cuts(problem)
        self.busy: tuple[str, ...] = tuple(
            sorted({task.device for task in problem.tasks})
        )
        self.choices: tuple[tuple[int, ...], ...] = tuple(
            problem.allowed_cuts(device) for device in self.busy
        )
        self.evaluations = 0
        self._memo: dict[tuple[int, ...], float] = {}

    def start_vector(self) -> tuple[int, ...]:
        """The contention-free cuts of the busy devices."""
        return tuple(self.start[device] for device in self.busy)

    def score(self, vector: tuple[int, ...]) -> float:
        """The objective of the scheme ``vector``."""
        known = self._memo.get(vector)
        if known is not None:
            return known
        self.evaluations += 1
        cuts = {**self.start, **dict(zip(self.busy, vector, strict=True))}
        value = objective_value(
            [prediction.delay_s for prediction in self.problem.predict(cuts)],
            self.problem.objective,
        )
        self._memo[vector] = value
        return value

    def cuts(self, vector: tuple[int, ...]) -> dict[str, int]:
        """The whole scheme: ``vector`` for the busy devices, the rest idle-best."""
        return {**self.start, **dict(zip(self.busy, vector, strict=True))}


def _replace(vector: tuple[int, ...], position: int, cut: int) -> tuple[int, ...]:
    return (*vector[:position], cut, *vector[position + 1 :])


class GreedyAlgorithm:
    """Contention-aware local search over single-device cut changes."""

    name = "greedy"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Improve the contention-free cuts one device at a time.

        Every round simulates each allowed change of one device's cut and
        applies the one that lowers the objective the most; the search stops
        when no change lowers it by more than :data:`EQUAL_S`.  The objective
        strictly decreases, so no scheme is visited twice and the search
        ends.  A round costs one simulation of the whole workload per allowed
        cut of every device with tasks, about ``N * L``.  Ties go to the
        device first by name, then to the larger cut.
        """
        scorer = _Scorer(problem)
        vector = scorer.start_vector()
        value = scorer.score(vector)
        while True:
            best: tuple[int, ...] | None = None
            best_value = value
            for position, choices in enumerate(scorer.choices):
                for cut in reversed(choices):
                    if cut == vector[position]:
                        continue
                    trial = _replace(vector, position, cut)
                    trial_value = scorer.score(trial)
                    if trial_value < best_value - EQUAL_S:
                        best, best_value = trial, trial_value
            if best is None:
                return scorer.cuts(vector)
            logger.debug(
                "greedy: cuts %s -> %s, %s %.9g -> %.9g",
                vector,
                best,
                problem.objective,
                value,
                best_value,
            )
            vector, value = best, best_value


class TrendAlgorithm:
    """Trend-based greedy: walk each device's cut while the objective falls."""

    name = "trend"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Sweep the devices, walking each cut in its improving direction.

        From the contention-free cuts, each device in name order tries the
        next allowed cut above and below its current one.  If one of them
        lowers the objective by more than :data:`EQUAL_S` (the larger drop
        wins, a tie goes up), the walk keeps stepping that way while each
        step lowers it further, and stops where the trend turns.  Sweeps
        repeat until one changes no cut.  A step costs one simulation; a
        sweep costs about ``2 N`` plus the steps walked, far less than a
        greedy round's ``N L``, at the price of stopping at the first local
        minimum along each device's cut axis.
        """
        scorer = _Scorer(problem)
        vector = scorer.start_vector()
        value = scorer.score(vector)
        changed = True
        while changed:
            changed = False
            for position in range(len(scorer.choices)):
                vector, new_value = self._walk(scorer, vector, value, position)
                if new_value < value - EQUAL_S:
                    changed = True
                    value = new_value
        return scorer.cuts(vector)

    @staticmethod
    def _walk(
        scorer: _Scorer, vector: tuple[int, ...], value: float, position: int
    ) -> tuple[tuple[int, ...], float]:
        """Walk device ``position``'s cut downhill; return the new vector."""
        choices = scorer.choices[position]
        index = choices.index(vector[position])

        # Pick the direction whose first step lowers the objective most.
        step = 0
        step_value = value
        for direction in (1, -1):
            neighbour = index + direction
            if 0 <= neighbour < len(choices):
                trial_value = scorer.score(
                    _replace(vector, position, choices[neighbour])
                )
                if trial_value < step_value - EQUAL_S:
                    step, step_value = direction, trial_value
        if step == 0:
            return vector, value

        # Keep walking while the trend holds.
        index += step
        vector, value = _replace(vector, position, choices[index]), step_value
        while 0 <= index + step < len(choices):
            trial = _replace(vector, position, choices[index + step])
            trial_value = scorer.score(trial)
            if trial_value >= value - EQUAL_S:
                break
            index += step
            vector, value = trial, trial_value
        return vector, value


class AnnealingAlgorithm:
    """Simulated annealing over the cut vector, seeded, geometric cooling.

    Parameters
    ----------
    steps:
        Proposals to evaluate (one simulation each, fewer when a vector
        repeats).
    seed:
        The generator's seed; ``None`` takes the problem's ``seed``.
    """

    name = "annealing"

    def __init__(self, *, steps: int = 400, seed: int | None = None) -> None:
        if steps < 1:
            raise ConfigError(f"annealing steps must be at least 1, got {steps}")
        self.steps = steps
        self.seed = seed

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Anneal from the contention-free cuts; return the best scheme seen.

        A proposal moves one device (chosen uniformly among the devices with
        more than one allowed cut) to another of its allowed cuts (chosen
        uniformly).  A proposal that worsens the objective by ``delta`` is
        accepted with probability ``exp(-delta / T)``.  The temperature
        starts at ``T0 = mean uphill delta / ln 2``, measured on 16 proposals
        from the start (so a typical uphill move is first accepted half the
        time), and falls geometrically, ``T_i = T0 * 1e-3 ** (i / steps)``, to
        a thousandth of ``T0`` at the last step.  Without an uphill proposal
        in the sample, ``T0`` is :data:`EQUAL_S` and the search is a
        randomised descent.
        """
        rng = random.Random(problem.seed if self.seed is None else self.seed)
        scorer = _Scorer(problem)
        movable = [i for i, choices in enumerate(scorer.choices) if len(choices) > 1]
        vector = scorer.start_vector()
        value = scorer.score(vector)
        best, best_value = vector, value
        if not movable:
            return scorer.cuts(best)

        def propose(current: tuple[int, ...]) -> tuple[int, ...]:
            position = rng.choice(movable)
            options = [c for c in scorer.choices[position] if c != current[position]]
            return _replace(current, position, rng.choice(options))

        uphill = [
            rise
            for rise in (scorer.score(propose(vector)) - value for _ in range(16))
            if rise > EQUAL_S
        ]
        start_temperature = (
            sum(uphill) / len(uphill) / math.log(2) if uphill else EQUAL_S
        )

        for step in range(self.steps):
            temperature = start_temperature * 1e-3 ** (step / self.steps)
            trial = propose(vector)
            trial_value = scorer.score(trial)
            delta = trial_value - value
            if delta <= 0 or rng.random() < math.exp(-delta / temperature):
                vector, value = trial, trial_value
                if value < best_value - EQUAL_S:
                    best, best_value = vector, value
        logger.debug(
            "annealing: T0 %.3g, %d simulations, best %s %.9g",
            start_temperature,
            scorer.evaluations,
            problem.objective,
            best_value,
        )
        return scorer.cuts(best)


class GeneticAlgorithm:
    """A seeded genetic algorithm over cut vectors.

    Parameters
    ----------
    population:
        Vectors per generation (at least 4).
    generations:
        Generations bred after the first.
    elite:
        Best vectors copied unchanged into the next generation.
    tournament:
        Vectors drawn (with replacement) for each selection; the best wins.
    seed:
        The generator's seed; ``None`` takes the problem's ``seed``.
    """

    name = "genetic"

    def __init__(
        self,
        *,
        population: int = 24,
        generations: int = 30,
        elite: int = 2,
        tournament: int = 3,
        seed: int | None = None,
    ) -> None:
        if population < 4 or generations < 0 or tournament < 1:
            raise ConfigError(
                f"genetic needs population >= 4, generations >= 0 and "
                f"tournament >= 1, got {population}, {generations}, {tournament}"
            )
        if not 0 <= elite < population:
            raise ConfigError(
                f"genetic elite must be in 0..{population - 1}, got {elite}"
            )
        self.population = population
        self.generations = generations
        self.elite = elite
        self.tournament = tournament
        self.seed = seed

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Breed cut vectors; return the best one ever scored.

        The first generation holds the contention-free cuts, every device at
        its largest allowed cut, every device at ``k = 0``, and random
        vectors.  Each later generation keeps the ``elite`` best and fills
        the rest with children: two parents by tournament, uniform crossover
        (each device's cut from either parent with probability 1/2), then
        each device's cut replaced by a random allowed cut with probability
        ``1 / devices``.  Ranking is by objective, then by the vector, so the
        order never depends on float noise in a tie.  Cost: at most
        ``population * (generations + 1)`` simulations.
        """
        rng = random.Random(problem.seed if self.seed is None else self.seed)
        scorer = _Scorer(problem)
        choices = scorer.choices
        width = len(choices)
        if width == 0:
            return scorer.cuts(())

        def ranked(vectors: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
            return sorted(vectors, key=lambda v: (scorer.score(v), v))

        def pick(pool: list[tuple[int, ...]]) -> tuple[int, ...]:
            entrants = [rng.choice(pool) for _ in range(self.tournament)]
            return min(entrants, key=lambda v: (scorer.score(v), v))

        seeds = [
            scorer.start_vector(),
            tuple(c[-1] for c in choices),
            tuple(c[0] for c in choices),
        ]
        while len(seeds) < self.population:
            seeds.append(tuple(rng.choice(c) for c in choices))
        generation = ranked(seeds[: self.population])
        best = generation[0]

        for _ in range(self.generations):
            children = generation[: self.elite]
            while len(children) < self.population:
                mother, father = pick(generation), pick(generation)
                child = [
                    m if rng.random() < 0.5 else f
                    for m, f in zip(mother, father, strict=True)
                ]
                for position in range(width):
                    if rng.random() < 1 / width:
                        child[position] = rng.choice(choices[position])
                children.append(tuple(child))
            generation = ranked(children)
            if (scorer.score(generation[0]), generation[0]) < (
                scorer.score(best),
                best,
            ):
                best = generation[0]
        logger.debug(
            "genetic: %d simulations, best %s %.9g",
            scorer.evaluations,
            problem.objective,
            scorer.score(best),
        )
        return scorer.cuts(best)


class ExactAlgorithm:
    """A proven optimum for small instances: branch and bound, or enumeration.

    Parameters
    ----------
    max_schemes:
        The largest search space (the product over devices with tasks of
        their allowed cut counts) branch and bound accepts.
    max_enumerated:
        The largest search space enumerated scheme by scheme, for the
        ``variance`` objective, which has no bound.
    max_nodes:
        Search nodes branch and bound may visit before it gives up.
    """

    name = "exact"

    def __init__(
        self,
        *,
        max_schemes: int = 10**8,
        max_enumerated: int = 200_000,
        max_nodes: int = 2_000_000,
    ) -> None:
        self.max_schemes = max_schemes
        self.max_enumerated = max_enumerated
        self.max_nodes = max_nodes

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Return a scheme whose objective is within :data:`EQUAL_S` of the least.

        ``total`` and ``max`` use branch and bound over the devices with a
        lower bound that is valid for the problem's scheduler (see
        :func:`_lower_bound`); ``variance`` enumerates every scheme.  The
        incumbent starts at the greedy scheme.

        Raises
        ------
        ConfigError
            If the search space exceeds ``max_schemes`` (``max_enumerated``
            for ``variance``), or branch and bound visits ``max_nodes`` nodes
            without finishing; the message gives the size.
        """
        scorer = _Scorer(problem)
        size = math.prod(len(choices) for choices in scorer.choices)
        limit = (
            self.max_enumerated if problem.objective == "variance" else self.max_schemes
        )
        if size > limit:
            counts = [len(choices) for choices in scorer.choices]
            raise ConfigError(
                f"exact: the instance has {size} schemes ({len(scorer.busy)} "
                f"devices with tasks, allowed cut counts {counts}); "
                f"the {problem.objective} objective is solved up to {limit}"
            )
        if problem.objective == "variance":
            # Larger cuts first, and only a strictly lower value replaces the
            # best, so a tie keeps the larger cuts.
            best: tuple[int, ...] = ()
            best_value = math.inf
            for vector in itertools.product(*(c[::-1] for c in scorer.choices)):
                value = scorer.score(vector)
                if value < best_value - EQUAL_S:
                    best, best_value = vector, value
            return scorer.cuts(best)
        return scorer.cuts(_BranchAndBound(problem, scorer, self.max_nodes).solve())


class _BranchAndBound:
    """Depth-first branch and bound over the busy devices, for total and max."""

    def __init__(self, problem: PlanningProblem, scorer: _Scorer, max_nodes: int):
        self.problem = problem
        self.scorer = scorer
        self.max_nodes = max_nodes
        self.nodes = 0
        self.tasks_of: dict[str, list[TaskSpec]] = {d: [] for d in scorer.busy}
        for task in problem.tasks:
            self.tasks_of[task.device].append(task)

        # Each device's bound at each cut on its own, and the best of them.
        self.alone: list[dict[int, float]] = [
            {cut: self._alone(device, cut) for cut in choices}
            for device, choices in zip(scorer.busy, scorer.choices, strict=True)
        ]
        # Branch on the devices that matter most first, their best cuts first.
        self.order = sorted(
            range(len(scorer.busy)),
            key=lambda i: (-max(self.alone[i].values()), scorer.busy[i]),
        )
        self.floor = [min(bounds.values()) for bounds in self.alone]

    def _alone(self, device: str, cut: int) -> float:
        """A lower bound on the objective over ``device``'s tasks at ``cut``.

        Under FCFS adding jobs never lets another job finish sooner, so the
        device simulated alone on the real BS bounds its tasks' delays in any
        scheme.  Other schedulers (``sjf``, ``rr`` and any other policy) do
        not have that property (a short job arriving early can let a later
        one overtake a long one under SJF or RR), so they use the device
        alone on a BS with a free worker for every job: no BS waiting.
        """
        contended = self.problem.scheduler == "fcfs"
        tasks = self.tasks_of[device]
        return self._combine(
            self._delays({device: cut}, tasks, contended=contended), []
        )

    def _delays(
        self, cuts: Mapping[str, int], tasks: Sequence[TaskSpec], *, contended: bool
    ) -> list[float]:
        problem = self.problem
        predictions = simulate(
            tasks,
            cuts=cuts,
            device_profiles=problem.device_profiles,
            bs_profile=problem.bs_profile,
            links=problem.links,
            scheduler="fcfs",
            workers=problem.workers if contended else max(1, len(tasks)),
        )
        return [p.delay_s for p in predictions]

    def _combine(self, delays_s: list[float], others: list[float]) -> float:
        """The objective of known delays joined with per-device bounds."""
        if self.problem.objective == "max":
            return max([*delays_s, *others], default=0.0)
        return math.fsum(delays_s) + math.fsum(others)

    def solve(self) -> tuple[int, ...]:
        """The optimal vector (in :attr:`_Scorer.busy` order)."""
        greedy_cuts = GreedyAlgorithm()(self.problem)
        self.best = tuple(greedy_cuts[device] for device in self.scorer.busy)
        self.best_value = self.scorer.score(self.best)
        self._branch(0, {})
        logger.debug(
            "exact: %d nodes, %d simulations, %s %.9g",
            self.nodes,
            self.scorer.evaluations,
            self.problem.objective,
            self.best_value,
        )
        return self.best

    def _branch(self, depth: int, assigned: dict[int, int]) -> None:
        if depth == len(self.order):
            vector = tuple(assigned[i] for i in range(len(self.order)))
            value = self.scorer.score(vector)
            if value < self.best_value - EQUAL_S:
                self.best, self.best_value = vector, value
            return
        position = self.order[depth]
        candidates = sorted(
            self.scorer.choices[position],
            key=lambda cut: (self.alone[position][cut], -cut),
        )
        for cut in candidates:
            self.nodes += 1
            if self.nodes > self.max_nodes:
                raise ConfigError(
                    f"exact: branch and bound visited {self.max_nodes} nodes "
                    f"without finishing ({len(self.order)} devices with tasks); "
                    "the instance is too large to prove optimal"
                )
            assigned[position] = cut
            if depth + 1 < len(self.order):
                bound = self._bound(assigned, depth + 1)
                if bound < self.best_value - EQUAL_S:
                    self._branch(depth + 1, assigned)
            else:
                self._branch(depth + 1, assigned)
            del assigned[position]

    def _bound(self, assigned: dict[int, int], depth: int) -> float:
        """A lower bound on every completion of the partial scheme ``assigned``.

        The unassigned devices count with their best bound alone.  The
        assigned devices' tasks are simulated together: on the real BS under
        FCFS (valid because FCFS is monotone, see :meth:`_alone`); for other
        schedulers the BS is relaxed to one preemptive machine ``workers``
        times as fast, on which SRPT gives the least total completion time
        and preemptive EDD (due date = the task's arrival) the least maximum
        delay; any real schedule of the assigned jobs is feasible there, and
        extra jobs only remove capacity.  Each task's contention-free delay
        also bounds it, and the larger figure is kept.
        """
        scorer = self.scorer
        others = [self.floor[i] for i in self.order[depth:]]
        cuts = {scorer.busy[i]: cut for i, cut in assigned.items()}
        tasks = [t for device in cuts for t in self.tasks_of[device]]
        if self.problem.scheduler == "fcfs":
            return self._combine(self._delays(cuts, tasks, contended=True), others)

        # One simulation with a free worker per job gives both the
        # contention-free delays and each job's release at the BS.
        predictions = simulate(
            tasks,
            cuts=cuts,
            device_profiles=self.problem.device_profiles,
            bs_profile=self.problem.bs_profile,
            links=self.problem.links,
            scheduler="fcfs",
            workers=max(1, len(tasks)),
        )
        free = self._combine([p.delay_s for p in predictions], others)
        relaxed = _relaxed_delays(
            [(p.end_s - p.bs_s, p.bs_s, p.arrival_s, p.end_s) for p in predictions],
            speed=self.problem.workers,
            objective=self.problem.objective,
        )
        return max(free, self._combine(relaxed, others))


def _relaxed_delays(
    jobs: list[tuple[float, float, float, float]],
    *,
    speed: int,
    objective: Objective,
) -> list[float]:
    """Delays on one preemptive machine of ``speed``, the best order for ``objective``.

    ``jobs`` holds ``(release_s, work_s, arrival_s, end_s)`` per task; a task
    with no BS work (``work_s == 0``) keeps its delay ``end_s - arrival_s``.
    The order is SRPT (least remaining work) for ``total`` and EDD (earliest
    arrival at the device) for ``max``.
    """
    delays_s = [
        end_s - arrival_s for _, work_s, arrival_s, end_s in jobs if work_s == 0
    ]
    pending = sorted(
        (release_s, work_s / speed, arrival_s)
        for release_s, work_s, arrival_s, _ in jobs
        if work_s > 0
    )
    key: Callable[[float, float], float] = (
        (lambda remaining_s, _arrival: remaining_s)
        if objective == "total"
        else (lambda _remaining, arrival_s: arrival_s)
    )
    ready: list[tuple[float, float, float]] = []
    now_s = pending[0][0] if pending else 0.0
    index = 0
    while index < len(pending) or ready:
        while index < len(pending) and pending[index][0] <= now_s:
            _, remaining_s, arrival_s = pending[index]
            heapq.heappush(ready, (key(remaining_s, arrival_s), remaining_s, arrival_s))
            index += 1
        if not ready:
            now_s = pending[index][0]
            continue
        _, remaining_s, arrival_s = heapq.heappop(ready)
        next_release_s = pending[index][0] if index < len(pending) else math.inf
        if now_s + remaining_s <= next_release_s:
            now_s += remaining_s
            delays_s.append(now_s - arrival_s)
        else:
            remaining_s -= next_release_s - now_s
            now_s = next_release_s
            heapq.heappush(ready, (key(remaining_s, arrival_s), remaining_s, arrival_s))
    return delays_s
