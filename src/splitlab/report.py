"""Summaries of a recorded run: delay statistics per device and overall.

Everything here is computed from the results store, so a summary printed
right after a run and one printed a month later agree.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitlab.results import PredictionRecord, ResultStore, RunRecord, TaskRecord

OVERALL = "all"


@dataclass(frozen=True, slots=True)
class DelayRow:
    """Delay statistics of a group of tasks (one device, or all), in seconds.

    Attributes
    ----------
    group:
        The device's name, or ``"all"``.
    cut:
        The device's cut, or ``None`` for the overall row.
    tasks, expected:
        Tasks recorded and tasks planned.
    mean_s, p50_s, p95_s:
        End-to-end delay statistics.
    device_s, transmission_s, bs_wait_s, bs_s:
        Mean of each part of the delay (device compute includes any wait on
        the device for an earlier task).
    predicted_mean_s:
        Mean delay the planner predicted for the same tasks.
    prediction_error:
        Median of ``|predicted - measured| / measured`` over the tasks.
    """

    group: str
    cut: int | None
    tasks: int
    expected: int
    mean_s: float
    p50_s: float
    p95_s: float
    device_s: float
    transmission_s: float
    bs_wait_s: float
    bs_s: float
    predicted_mean_s: float
    prediction_error: float


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run's outcome in numbers.

    Attributes
    ----------
    run:
        The run's row.
    rows:
        One :class:`DelayRow` per device, then the overall row.
    verified, matched:
        Tasks whose output was checked against the unsplit model, and how
        many matched it.
    accuracy:
        Share of tasks whose prediction equals the sample's label.
    limit_mechanisms:
        The CPU limit mechanisms the devices ran under.
    """

    run: RunRecord
    rows: tuple[DelayRow, ...]
    verified: int
    matched: int
    accuracy: float | None
    limit_mechanisms: tuple[str, ...]


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _row(
    group: str,
    cut: int | None,
    tasks: Sequence[TaskRecord],
    predictions: Sequence[PredictionRecord],
) -> DelayRow:
    predicted = {p.task_id: p.delay_s for p in predictions}
    delays = [task.delay_s for task in tasks]
    errors = [
        abs(predicted[task.task_id] - task.delay_s) / task.delay_s
        for task in tasks
        if task.task_id in predicted and task.delay_s > 0
    ]

    def mean(values: Sequence[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    return DelayRow(
        group=group,
        cut=cut,
        tasks=len(tasks),
        expected=len(predictions),
        mean_s=mean(delays),
        p50_s=_percentile(delays, 50),
        p95_s=_percentile(delays, 95),
        device_s=mean([task.device_wait_s + task.device_s for task in tasks]),
        transmission_s=mean([task.transmission_s for task in tasks]),
        bs_wait_s=mean([task.bs_wait_s for task in tasks]),
        bs_s=mean([task.bs_s for task in tasks]),
        predicted_mean_s=mean([p.delay_s for p in predictions]),
        prediction_error=statistics.median(errors) if errors else float("nan"),
    )


def summarise(store: ResultStore, run_id: int) -> RunSummary:
    """Summarise a run from the store."""
    run = store.run(run_id)
    tasks = store.tasks(run_id)
    predictions = store.predictions(run_id)
    cuts = store.cuts(run_id)
    devices = [node.node for node in store.nodes(run_id) if node.role == "device"]

    rows = [
        _row(
            device,
            cuts.get(device),
            [task for task in tasks if task.device == device],
            [p for p in predictions if p.device == device],
        )
        for device in devices
    ]
    rows.append(_row(OVERALL, None, tasks, predictions))

    verified = [task for task in tasks if task.matches_unsplit is not None]
    mechanisms = sorted(
        {
            node.limit_mechanism
            for node in store.nodes(run_id)
            if node.limit_mechanism is not None
        }
    )
    return RunSummary(
        run=run,
        rows=tuple(rows),
        verified=len(verified),
        matched=sum(1 for task in verified if task.matches_unsplit),
        accuracy=(
            sum(1 for task in tasks if task.prediction == task.label) / len(tasks)
            if tasks
            else None
        ),
        limit_mechanisms=tuple(mechanisms),
    )
