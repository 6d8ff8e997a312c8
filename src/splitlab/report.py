"""Summaries and reports of recorded runs, from the results store alone.

:func:`summarise` gives a run's delay statistics per device and overall;
:func:`run_report_html` turns them, the schedule, the profiles and the plan
into one self-contained HTML page with figures.  :func:`compare` arranges
several runs (a sweep's cells, or runs named by hand) by the fields in which
they differ, with confidence intervals over seeds, and
:func:`comparison_html` reports that.  Everything is computed from the
store, so a report made right after a run and one made a month later agree.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import yaml

from splitlab.energy import mean_by_device, run_energy
from splitlab.errors import ConfigError
from splitlab.monitor import NodeUsage, summarise_usage
from splitlab.results import (
    CodecCheck,
    PredictionRecord,
    ResultStore,
    RunRecord,
    TaskRecord,
)
from splitlab.usercode import is_onnx_file

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
    deadline_misses:
        Tasks that took longer than the scenario's ``workload.deadline_ms``,
        or ``None`` when the scenario sets no deadline.
    min_cosine:
        For an encoder (MiniLM), the lowest cosine similarity of a task's
        split embedding to the unsplit model's, as the station verified it;
        ``accuracy`` is then ``None``.  ``None`` for a classifier.
    usage:
        Each node's CPU, memory and RTT from the monitoring samples (empty
        when monitoring was off).
    energy_per_task_j:
        Mean modelled energy per task, in joules, of each device that names
        a device class (see :mod:`splitlab.energy`).
    compared:
        Tasks sent in a lossy codec and compared with the float32 model
        rather than checked for equality.
    codec_checks:
        One comparison per lossy codec used in the run.
    """

    run: RunRecord
    rows: tuple[DelayRow, ...]
    verified: int
    matched: int
    accuracy: float | None
    limit_mechanisms: tuple[str, ...]
    deadline_misses: int | None = None
    min_cosine: float | None = None
    usage: tuple[NodeUsage, ...] = ()
    energy_per_task_j: Mapping[str, float] = field(default_factory=dict)
    compared: int = 0
    codec_checks: tuple[CodecCheck, ...] = ()


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
    min_cosine = _min_cosine(store, run_id)
    return RunSummary(
        run=run,
        rows=tuple(rows),
        verified=len(verified),
        matched=sum(1 for task in verified if task.matches_unsplit),
        accuracy=(
            sum(1 for task in tasks if task.prediction == task.label) / len(tasks)
            if tasks and min_cosine is None and _classifies(run)
            else None
        ),
        limit_mechanisms=tuple(mechanisms),
        deadline_misses=_deadline_misses(run, tasks),
        min_cosine=min_cosine,
        usage=summarise_usage(store.samples(run_id)),
        energy_per_task_j=mean_by_device(run_energy(store, run_id)),
        compared=sum(
            1
            for task in tasks
            if task.matches_unsplit is None and task.max_abs_diff is not None
        ),
        codec_checks=tuple(store.codec_checks(run_id)),
    )


def _classifies(run: RunRecord) -> bool:
    """False for an ONNX model whose output is not one score per class."""
    model = str((yaml.safe_load(run.scenario_yaml) or {}).get("model", ""))
    return not (is_onnx_file(model) and run.test_accuracy is None)


def _min_cosine(store: ResultStore, run_id: int) -> float | None:
    """The lowest cosine the station's verification of an encoder reported."""
    found = None
    for _, _, kind, detail in store.events(run_id):
        if kind == "verified":
            value = json.loads(detail).get("min_cosine")
            found = None if value is None else float(value)
    return found


def _deadline_misses(run: RunRecord, tasks: Sequence[TaskRecord]) -> int | None:
    workload = (yaml.safe_load(run.scenario_yaml) or {}).get("workload") or {}
    deadline_ms = workload.get("deadline_ms")
    if deadline_ms is None:
        return None
    return sum(1 for task in tasks if task.delay_s * 1e3 > float(deadline_ms))


# Comparisons of several runs -------------------------------------------------

REPLICATE_FIELD = "seed"
_LINE_FIELDS = ("algorithm", "scheduler")

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom; the
# normal quantile beyond.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ComparedRun:
    """One run in a comparison.

    Attributes
    ----------
    run_id:
        The run.
    params:
        The fields that vary between the compared runs, with this run's values.
    line, x:
        The run's group (one line in the figures) and its value of the
        swept field.
    mean_s, p95_s:
        The run's mean and 95th percentile delay over all its tasks.
    tasks:
        Tasks recorded.
    """

    run_id: int
    params: Mapping[str, Any]
    line: str
    x: Any
    mean_s: float
    p95_s: float
    tasks: int


@dataclass(frozen=True, slots=True)
class ComparisonPoint:
    """A metric of one line at one x, over the runs that share both.

    ``value_s`` is the mean of the per-run values; ``low_s`` and ``high_s``
    bound its 95 % confidence interval (Student's t; equal to ``value_s``
    for a single run).
    """

    line: str
    x: Any
    metric: Literal["mean", "p95"]
    value_s: float
    low_s: float
    high_s: float
    replicates: int
    run_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CutPoint:
    """The cut one run chose for one device, beside the device's link."""

    run_id: int
    line: str
    device: str
    rate_mbps: float
    latency_ms: float
    cut: int


@dataclass(frozen=True, slots=True)
class Comparison:
    """Several runs arranged by what differs between them.

    Attributes
    ----------
    title:
        What is compared (a sweep's name, or the run ids).
    x_name:
        The field on the x axis, or ``None`` when nothing but the line
        fields varies.
    line_name:
        The fields that make the lines, joined with ``", "``.
    replicate_name:
        The field whose values are repeats (``seed``), or ``None``.
    x_values, line_labels:
        The x values in axis order, and the lines in legend order.
    runs, points, cut_points:
        Every run, every (line, x, metric) point, every (run, device) cut.
    stage_names:
        The model's stage names, for labelling cuts.
    """

    title: str
    x_name: str | None
    line_name: str
    replicate_name: str | None
    x_values: tuple[Any, ...]
    line_labels: tuple[str, ...]
    runs: tuple[ComparedRun, ...]
    points: tuple[ComparisonPoint, ...]
    cut_points: tuple[CutPoint, ...]
    stage_names: tuple[str, ...]


def confidence_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """The mean of ``values`` and its two-sided 95 % confidence interval.

    Student's t with ``n - 1`` degrees of freedom; a single value has an
    interval of zero width.
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    df = len(values) - 1
    t = _T95[df - 1] if df <= len(_T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(data, list):
        flat = {}
        for index, value in enumerate(data):
            name = value.get("name") if isinstance(value, dict) else None
            flat.update(_flatten(value, f"{prefix}[{name or index}]"))
        return flat
    return {prefix: data}


def varying_fields(
    scenarios: Mapping[int, Mapping[str, Any]],
) -> dict[int, dict[str, Any]]:
    """The scenario fields that differ between runs, per run.

    Parameters
    ----------
    scenarios:
        Run id to the run's scenario as parsed YAML.

    Returns
    -------
    dict
        Run id to field path to value, for the fields that take more than
        one value across the runs.  A list field that every run sets equally
        on all its elements is named once with ``[*]``
        (``devices[*].link.latency_ms``).
    """
    flat = {run_id: _flatten(dict(data)) for run_id, data in scenarios.items()}
    keys = sorted({key for fields in flat.values() for key in fields})

    collapsed: dict[int, dict[str, Any]] = {run_id: {} for run_id in flat}
    groups: dict[str, list[str]] = {}
    for key in keys:
        match = re.match(r"^([^\[]+)\[[^\]]+\](.*)$", key)
        groups.setdefault(f"{match[1]}[*]{match[2]}" if match else key, []).append(key)
    for name, members in groups.items():
        values = {
            run_id: [fields.get(k) for k in members] for run_id, fields in flat.items()
        }
        uniform = all(len({repr(v) for v in vals}) == 1 for vals in values.values())
        if uniform and len(members) > 1:
            for run_id, vals in values.items():
                collapsed[run_id][name] = vals[0]
        else:
            for run_id, fields in flat.items():
                for key in members:
                    collapsed[run_id][key] = fields.get(key)

    all_keys = {key for fields in collapsed.values() for key in fields}
    varying = {
        key
        for key in all_keys
        if len({repr(fields.get(key)) for fields in collapsed.values()}) > 1
    }
    return {
        run_id: {key: value for key, value in sorted(fields.items()) if key in varying}
        for run_id, fields in collapsed.items()
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value_label(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def compare(
    store: ResultStore,
    params: Mapping[int, Mapping[str, Any]],
    *,
    title: str,
    x: str | None = None,
) -> Comparison:
    """Arrange runs by their parameters: x axis, lines and repeats.

    Parameters
    ----------
    store:
        The results store holding the runs.
    params:
        Run id to the fields that vary (a sweep's cell values, or
        :func:`varying_fields`).
    title:
        Names the comparison in figures.
    x:
        The field for the x axis; by default the first varying field that
        is not ``seed``, ``algorithm`` or ``scheduler``, preferring numbers.

    Raises
    ------
    ConfigError
        If ``x`` is not one of the fields.
    """
    fields = {key for values in params.values() for key in values}
    varying = [
        key
        for key in sorted(fields)
        if len({repr(values.get(key)) for values in params.values()}) > 1
    ]
    if x is not None and x not in fields:
        raise ConfigError(
            f"--x {x!r} is not a compared field; fields: {', '.join(sorted(fields))}"
        )
    replicate = REPLICATE_FIELD if REPLICATE_FIELD in varying else None
    if x is None:
        candidates = [k for k in varying if k not in (*_LINE_FIELDS, REPLICATE_FIELD)]
        numeric = [
            k for k in candidates if all(_is_number(p.get(k)) for p in params.values())
        ]
        chosen: list[str | None] = [*numeric, *candidates, None]
        x = chosen[0]
    line_fields = [k for k in varying if k not in (x, REPLICATE_FIELD)]

    def line_of(values: Mapping[str, Any]) -> str:
        parts = [
            _value_label(values.get(k))
            if k in _LINE_FIELDS
            else f"{k}={_value_label(values.get(k))}"
            for k in line_fields
        ]
        return ", ".join(parts) or "all runs"

    runs = []
    cut_points = []
    stage_names: tuple[str, ...] = ()
    for run_id in sorted(params):
        values = params[run_id]
        overall = summarise(store, run_id).rows[-1]
        line = line_of(values)
        runs.append(
            ComparedRun(
                run_id=run_id,
                params=dict(values),
                line=line,
                x=values.get(x) if x else "",
                mean_s=overall.mean_s,
                p95_s=overall.p95_s,
                tasks=overall.tasks,
            )
        )
        cuts = store.cuts(run_id)
        for node in store.nodes(run_id):
            if node.role == "device" and node.node in cuts and node.link:
                cut_points.append(
                    CutPoint(
                        run_id=run_id,
                        line=line,
                        device=node.node,
                        rate_mbps=float(node.link["rate_mbps"]),
                        latency_ms=float(node.link["latency_ms"]),
                        cut=cuts[node.node],
                    )
                )
        if not stage_names:
            profiles = store.profiles(run_id)
            if profiles:
                stage_names = tuple(
                    s.name for s in next(iter(profiles.values())).stages
                )

    x_values: list[Any] = []
    for run in runs:
        if all(repr(run.x) != repr(seen) for seen in x_values):
            x_values.append(run.x)
    if all(_is_number(value) for value in x_values):
        x_values.sort()
    lines = list(dict.fromkeys(run.line for run in runs))

    points = []
    for line in lines:
        for x_value in x_values:
            group = [r for r in runs if r.line == line and repr(r.x) == repr(x_value)]
            group = [r for r in group if r.tasks]
            if not group:
                continue
            metrics: tuple[Literal["mean", "p95"], ...] = ("mean", "p95")
            for metric in metrics:
                per_run = [r.mean_s if metric == "mean" else r.p95_s for r in group]
                value, low, high = confidence_interval(per_run)
                points.append(
                    ComparisonPoint(
                        line=line,
                        x=x_value,
                        metric=metric,
                        value_s=value,
                        low_s=low,
                        high_s=high,
                        replicates=len(group),
                        run_ids=tuple(r.run_id for r in group),
                    )
                )
    return Comparison(
        title=title,
        x_name=x,
        line_name=", ".join(line_fields) or "runs",
        replicate_name=replicate,
        x_values=tuple(x_values),
        line_labels=tuple(lines),
        runs=tuple(runs),
        points=tuple(points),
        cut_points=tuple(cut_points),
        stage_names=stage_names,
    )


def compare_runs(
    store: ResultStore, run_ids: Sequence[int], *, x: str | None = None
) -> Comparison:
    """Compare recorded runs by the scenario fields in which they differ."""
    scenarios = {
        run_id: yaml.safe_load(store.run(run_id).scenario_yaml) for run_id in run_ids
    }
    return compare(
        store,
        varying_fields(scenarios),
        title="runs " + ", ".join(str(r) for r in run_ids),
        x=x,
    )


# HTML ---------------------------------------------------------------------


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.overall td { font-weight: bold; border-top: 2px solid #999; }
figure { margin: 1em 0; page-break-inside: avoid; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _cell(value: Any, *, numeric: bool = False) -> str:
    css = ' class="num"' if numeric else ""
    return f"<td{css}>{html.escape(str(value))}</td>"


def _ms_text(value_s: float) -> str:
    return "-" if math.isnan(value_s) else f"{value_s * 1e3:.2f}"


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    table_id: str,
    numeric_from: int = 1,
    row_classes: Sequence[str] = (),
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        css = row_classes[index] if index < len(row_classes) else ""
        cells = "".join(_cell(v, numeric=i >= numeric_from) for i, v in enumerate(row))
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _figure(figure_id: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{figure_id}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}'
        "</figcaption></figure>"
    )


def _page(title: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n"
    )


SUMMARY_HEADERS = (
    "device", "k", "tasks", "expected", "mean ms", "p50 ms", "p95 ms",
    "device ms", "link ms", "BS wait ms", "BS ms", "predicted mean ms",
    "prediction error",
)  # fmt: skip

RUN_FIGURES = ("breakdown", "schedule", "cdf", "profile", "prediction", "cuts")
COMPARISON_FIGURES = ("metric", "cut-rate")


def summary_table_rows(summary: RunSummary) -> list[list[str]]:
    """The summary's rows as the report's table shows them (times in ms)."""
    return [
        [
            row.group,
            "" if row.cut is None else str(row.cut),
            str(row.tasks),
            str(row.expected),
            _ms_text(row.mean_s),
            _ms_text(row.p50_s),
            _ms_text(row.p95_s),
            _ms_text(row.device_s),
            _ms_text(row.transmission_s),
            _ms_text(row.bs_wait_s),
            _ms_text(row.bs_s),
            _ms_text(row.predicted_mean_s),
            "-" if math.isnan(row.prediction_error) else f"{row.prediction_error:.1%}",
        ]
        for row in summary.rows
    ]


def run_report_html(store: ResultStore, run_id: int) -> str:
    """A self-contained HTML report of one run: tables and PNG figures.

    The figures are embedded as base64 PNG, so the file can be mailed or
    printed alone.  Each figure is a ``<figure>`` with the id ``fig-NAME``
    for NAME in :data:`RUN_FIGURES`.
    """
    from splitlab import plot

    summary = summarise(store, run_id)
    run = summary.run
    tasks = store.tasks(run_id)
    nodes = store.nodes(run_id)
    devices = [node.node for node in nodes if node.role == "device"]
    bs_names = [node.node for node in nodes if node.role == "bs"]
    profiles = store.profiles(run_id)
    cuts = store.cuts(run_id)
    stage_names = (
        [s.name for s in next(iter(profiles.values())).stages] if profiles else []
    )
    scenario = yaml.safe_load(run.scenario_yaml)
    workers = int(scenario.get("base_station", {}).get("workers", 1))
    slices = store.slices(run_id)
    workers = max([workers, *(piece.worker + 1 for piece in slices)])

    # Facts about the run.
    duration = (
        "-" if run.finished_at is None else f"{run.finished_at - run.started_at:.1f} s"
    )
    accuracy = "-" if summary.accuracy is None else f"{summary.accuracy:.1%}"
    if summary.min_cosine is not None:
        accuracy = f"- (lowest cosine to unsplit {summary.min_cosine:.7f})"
    env = run.environment
    facts = [
        ("scenario", run.name),
        ("status", run.status + (f" ({run.reason})" if run.reason else "")),
        ("algorithm", run.algorithm),
        ("scheduler", run.scheduler),
        ("seed", run.seed),
        ("scenario hash", run.scenario_hash),
        (
            "started",
            datetime.fromtimestamp(run.started_at, UTC).isoformat(timespec="seconds"),
        ),
        ("duration", duration),
        (
            "split output equals unsplit",
            f"{summary.matched} of {summary.verified} tasks",
        ),
        ("accuracy on the tasks", accuracy),
        *(
            (
                f"codec {check.codec} against fp32",
                f"{check.tasks} tasks, top-1 agreement {check.agreement:.1%}, "
                f"accuracy change {check.accuracy_change * 100:+.1f} points, "
                f"max |change| {check.max_abs_change:.3g}",
            )
            for check in summary.codec_checks
        ),
        ("CPU limits by", ", ".join(summary.limit_mechanisms) or "-"),
        (
            "versions",
            ", ".join(
                f"{k} {env.get(k)}" for k in ("splitlab", "python", "torch", "numpy")
            ),
        ),
        ("git revision", env.get("revision") or "-"),
    ]
    body = [
        "<h2>Run</h2>",
        _table(("field", "value"), facts, table_id="facts", numeric_from=99),
        "<h2>Delays</h2>",
        "<p>Times in milliseconds: end-to-end mean, median and 95th percentile, "
        "the mean of each part, the mean the planner predicted, and the median "
        "relative error of the prediction per task.</p>",
        _table(
            SUMMARY_HEADERS,
            summary_table_rows(summary),
            table_id="summary",
            row_classes=[
                "overall" if row.group == OVERALL else "" for row in summary.rows
            ],
        ),
    ]

    # The scheme.
    by_node = {node.node: node for node in nodes}
    cut_rows = []
    for device in devices:
        cut = cuts.get(device)
        node = by_node[device]
        link = node.link or {}
        after = (
            "-" if cut is None else ("(input)" if cut == 0 else stage_names[cut - 1])
        )
        sent = "-"
        if cut is not None and profiles.get(device):
            sent = str(profiles[device].cut_bytes(cut))
        cut_rows.append([
            device, "-" if cut is None else cut, after, sent,
            link.get("latency_ms", "-"), link.get("rate_mbps", "-"),
            link.get("jitter_ms", "-"), node.cpu_share,
        ])  # fmt: skip
    body += [
        "<h2>Chosen cuts</h2>",
        _table(
            (
                "device",
                "k",
                "after stage",
                "bytes sent",
                "latency ms",
                "rate Mbit/s",
                "jitter ms",
                "CPU share",
            ),
            cut_rows,
            table_id="cuts",
        ),
    ]

    # Figures.
    figures = {
        "breakdown": (
            plot.delay_breakdown_figure(summary.rows),
            "Mean delay per device split into device compute, transmission, "
            "waiting at the BS and BS compute (ms).",
        ),
        "schedule": (
            plot.schedule_figure(
                slices,
                devices,
                workers=workers,
                offloaded=sum(1 for task in tasks if task.cut < len(stage_names)),
            ),
            "The BS schedule: every slice a worker ran, coloured by device.",
        ),
        "cdf": (
            plot.delay_cdf_figure(tasks, devices),
            "Cumulative distribution of end-to-end delay per device.",
        ),
        "profile": (
            plot.profile_figure(profiles, [*bs_names, *devices]),
            "Median time of each stage on each node, and bytes at each cut.",
        ),
        "prediction": (
            plot.prediction_figure(tasks, store.predictions(run_id), devices),
            "Predicted against measured delay per task; the line is equality.",
        ),
        "cuts": (
            plot.cuts_figure(cuts, stage_names, devices),
            "Which stages run on each device and which on the BS.",
        ),
    }
    body.append("<h2>Figures</h2>")
    for name in RUN_FIGURES:
        figure, caption = figures[name]
        body.append(_figure(f"fig-{name}", plot.png_bytes(figure), caption))
    body += [
        "<h2>Scenario</h2>",
        f"<pre>{html.escape(run.scenario_yaml)}</pre>",
    ]
    return _page(f"splitlab run {run.run_id}: {run.name}", body)


def comparison_rows(comparison: Comparison) -> list[list[str]]:
    """The comparison's points as the report's table shows them (ms)."""
    rows = []
    for point in comparison.points:
        rows.append([
            point.line, _value_label(point.x), point.metric,
            _ms_text(point.value_s), _ms_text(point.low_s), _ms_text(point.high_s),
            str(point.replicates), " ".join(str(r) for r in point.run_ids),
        ])  # fmt: skip
    return rows


def comparison_html(comparison: Comparison) -> str:
    """A self-contained HTML report comparing runs (a sweep, or chosen runs)."""
    from splitlab import plot

    x_name = comparison.x_name or "-"
    run_rows = [
        [str(run.run_id), run.line, _value_label(run.x),
         ", ".join(f"{k}={_value_label(v)}" for k, v in run.params.items()),
         str(run.tasks), _ms_text(run.mean_s), _ms_text(run.p95_s)]
        for run in comparison.runs
    ]  # fmt: skip
    body = [
        f"<p>x axis: <b>{html.escape(x_name)}</b>; lines: "
        f"<b>{html.escape(comparison.line_name)}</b>; repeats over: "
        f"<b>{html.escape(comparison.replicate_name or '-')}</b>. Confidence "
        "intervals are 95 % (Student's t) over the runs of a point.</p>",
        "<h2>Points</h2>",
        _table(
            (
                "line",
                x_name,
                "metric",
                "value ms",
                "CI low ms",
                "CI high ms",
                "runs",
                "run ids",
            ),
            comparison_rows(comparison),
            table_id="points",
            numeric_from=3,
        ),
        "<h2>Figures</h2>",
        _figure(
            "fig-metric",
            plot.png_bytes(plot.comparison_figure(comparison)),
            f"Mean and 95th percentile delay against {x_name}, one line per "
            f"{comparison.line_name}; error bars are 95 % confidence intervals.",
        ),
        _figure(
            "fig-cut-rate",
            plot.png_bytes(plot.cut_rate_figure(comparison)),
            "The cut chosen for each device against its link rate.",
        ),
        "<h2>Runs</h2>",
        _table(
            ("run", "line", x_name, "fields", "tasks", "mean ms", "p95 ms"),
            run_rows,
            table_id="runs",
            numeric_from=4,
        ),
    ]
    return _page(f"splitlab comparison: {comparison.title}", body)
