"""Figures of runs and comparisons, drawn with matplotlib's Agg renderer.

Every function takes records from the results store (or a summary made from
them) and returns a :class:`matplotlib.figure.Figure` that is not attached to
pyplot, so drawing never opens a window and never touches global state.
:func:`png_bytes` renders one to PNG.  Times are shown in milliseconds, sizes
in bytes (KiB), and each device keeps one colour across a run's figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from splitlab.profile import NodeProfile
from splitlab.report import OVERALL, Comparison, DelayRow
from splitlab.results import PredictionRecord, SliceRecord, TaskRecord

PART_COLOURS = {
    "device compute": "#4c72b0",
    "transmission": "#dd8452",
    "BS wait": "#c44e52",
    "BS compute": "#55a868",
}
_PALETTE = tuple(f"C{i}" for i in range(10))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DPI = 110


def device_colours(devices: Sequence[str]) -> dict[str, Any]:
    """One colour per device, in the order given, cycling through tab10."""
    return {device: _PALETTE[i % len(_PALETTE)] for i, device in enumerate(devices)}


def png_bytes(figure: Figure) -> bytes:
    """Render ``figure`` to PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _plain_log(axis: Any) -> None:
    """Log scale with ticks at 1, 2 and 5 times powers of ten, written plainly."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _empty(figure: Figure, text: str) -> Figure:
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, wrap=True)
    return figure


def delay_breakdown_figure(rows: Sequence[DelayRow]) -> Figure:
    """Stacked bars of each device's mean delay split into its four parts."""
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    rows = [row for row in rows if row.group != OVERALL and row.tasks]
    if not rows:
        return _empty(figure, "no finished tasks")
    axes = figure.add_subplot()
    labels = [f"{row.group}\n(k={row.cut})" for row in rows]
    bottom = np.zeros(len(rows))
    parts = {
        "device compute": [row.device_s for row in rows],
        "transmission": [row.transmission_s for row in rows],
        "BS wait": [row.bs_wait_s for row in rows],
        "BS compute": [row.bs_s for row in rows],
    }
    for part, values_s in parts.items():
        values_ms = np.asarray(values_s) * 1e3
        axes.bar(labels, values_ms, bottom=bottom, label=part, color=PART_COLOURS[part])
        bottom += values_ms
    for x, (total, row) in enumerate(zip(bottom, rows, strict=True)):
        axes.annotate(
            f"{total:.1f} ms\n(p95 {row.p95_s * 1e3:.1f})",
            (x, total),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes.set_ylim(0, bottom.max() * 1.25 if bottom.max() > 0 else 1)
    axes.set_ylabel("mean delay per task (ms)")
    axes.set_xlabel("device (cut k)")
    axes.set_title("Where each device's delay goes")
    axes.legend(loc="upper left", fontsize=9, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return figure


def _busiest_window(
    spans: Mapping[int, tuple[float, float]], tasks: int = 3
) -> tuple[float, float]:
    """The shortest stretch holding ``tasks`` consecutive tasks' BS work."""
    ordered = sorted(spans.values())
    count = min(tasks, len(ordered))
    best = min(
        range(len(ordered) - count + 1),
        key=lambda i: max(end for _, end in ordered[i : i + count]) - ordered[i][0],
    )
    start = ordered[best][0]
    end = max(end for _, end in ordered[best : best + count])
    pad = (end - start) * 0.05
    return start - pad, end + pad


def schedule_figure(
    slices: Sequence[SliceRecord],
    devices: Sequence[str],
    *,
    workers: int,
    offloaded: int = 0,
) -> Figure:
    """The BS schedule as a Gantt chart: one row per worker, bars by device.

    The top panel is the whole run; the bottom one zooms into the busiest
    stretch, where the order the scheduler chose can be read.  ``offloaded``
    counts the tasks that reached the BS, to tell "ran nothing" from "did not
    record its schedule".
    """
    figure = Figure(figsize=(9, 5.2), layout="constrained")
    if not slices and offloaded:
        return _empty(
            figure,
            f"{offloaded} tasks ran at the base station, but this run recorded "
            "no schedule (it predates schedule recording).",
        )
    if not slices:
        return _empty(
            figure,
            "The base station ran nothing: every device ran the whole model.",
        )
    colours = device_colours(devices)
    slices = sorted(slices, key=lambda piece: piece.start_s)
    spans: dict[int, tuple[float, float]] = {}
    for piece in slices:
        first, last = spans.get(piece.task_id, (piece.start_s, piece.end_s))
        spans[piece.task_id] = (min(first, piece.start_s), max(last, piece.end_s))
    window = _busiest_window(spans)

    top, bottom = figure.subplots(2, 1, height_ratios=(1, 1.3))
    for axes, limits in ((top, None), (bottom, window)):
        for piece in slices:
            if limits and (piece.end_s < limits[0] or piece.start_s > limits[1]):
                continue
            axes.broken_barh(
                [(piece.start_s * 1e3, (piece.end_s - piece.start_s) * 1e3)],
                (piece.worker - 0.4, 0.8),
                facecolors=colours.get(piece.device, "grey"),
                edgecolor="white" if limits else "none",
                linewidth=0.5,
            )
            if limits:
                # Name the stages a slice ran when the bar is wide enough.
                middle = (piece.start_s + piece.end_s) / 2 * 1e3
                if (piece.end_s - piece.start_s) > (limits[1] - limits[0]) / 40:
                    axes.text(
                        middle,
                        piece.worker,
                        str(piece.first_stage + 1),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white",
                    )
        axes.set_yticks(range(workers), [f"worker {w}" for w in range(workers)])
        axes.set_ylim(-0.6, workers - 0.4)
        axes.grid(axis="x", alpha=0.3)
        if limits:
            axes.set_xlim(limits[0] * 1e3, limits[1] * 1e3)
    top.set_title("BS schedule: the whole run")
    bottom.set_title(
        "The busiest three tasks (numbers: first stage of a wide slice, 1-based)",
        fontsize=10,
    )
    bottom.set_xlabel("time since the run started (ms)")
    top.indicate_inset(
        [window[0] * 1e3, -0.5, (window[1] - window[0]) * 1e3, workers],
        edgecolor="black",
    )
    figure.legend(
        handles=[Patch(color=colours[d], label=d) for d in devices],
        loc="outside upper right",
        ncols=len(devices),
        fontsize=9,
        frameon=False,
    )
    return figure


def delay_cdf_figure(tasks: Sequence[TaskRecord], devices: Sequence[str]) -> Figure:
    """The distribution of end-to-end delay, one CDF per device."""
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    if not tasks:
        return _empty(figure, "no finished tasks")
    axes = figure.add_subplot()
    colours = device_colours(devices)
    for device in devices:
        delays_ms = np.sort([t.delay_s * 1e3 for t in tasks if t.device == device])
        if not len(delays_ms):
            continue
        share = np.arange(1, len(delays_ms) + 1) / len(delays_ms)
        axes.step(
            np.concatenate(([delays_ms[0]], delays_ms)),
            np.concatenate(([0.0], share)),
            where="post",
            color=colours[device],
            label=f"{device} (n={len(delays_ms)})",
            linewidth=1.8,
        )
    delays = [t.delay_s * 1e3 for t in tasks]
    if min(delays) > 0 and max(delays) / min(delays) > 20:
        axes.set_xscale("log")
    axes.set_xlabel("end-to-end delay (ms)")
    axes.set_ylabel("share of tasks with at most this delay")
    axes.set_ylim(0, 1.02)
    axes.set_title("Delay distribution per device")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right", fontsize=9)
    return figure


def profile_figure(profiles: Mapping[str, NodeProfile], nodes: Sequence[str]) -> Figure:
    """Median time of every stage on every node, and the bytes at every cut."""
    figure = Figure(figsize=(9, 6.5), layout="constrained")
    present = [node for node in nodes if node in profiles]
    if not present:
        return _empty(figure, "no profiles recorded")
    first = profiles[present[0]]
    names = [stage.name for stage in first.stages]
    times, sizes = figure.subplots(2, 1)

    width = 0.8 / len(present)
    colours = device_colours(present)
    for i, node in enumerate(present):
        medians_ms = [stage.median_s * 1e3 for stage in profiles[node].stages]
        times.bar(
            np.arange(len(names)) + (i - (len(present) - 1) / 2) * width,
            medians_ms,
            width,
            label=node,
            color=colours[node],
        )
    times.set_xticks(range(len(names)), names)
    times.set_ylabel("median time (ms)")
    times.set_title(
        "Median time of each stage on each node (devices under their CPU limits)"
    )
    times.legend(fontsize=8, ncols=min(len(present), 5))
    times.grid(axis="y", alpha=0.3)

    cut_bytes = [first.input_bytes] + [stage.output_bytes for stage in first.stages]
    labels = ["0\ninput"] + [f"{k}\n{name}" for k, name in enumerate(names, start=1)]
    bars = sizes.bar(range(len(cut_bytes)), np.asarray(cut_bytes) / 1024, color="grey")
    sizes.bar_label(bars, [f"{b / 1024:.0f}" for b in cut_bytes], fontsize=7)
    sizes.set_xticks(range(len(cut_bytes)), labels, fontsize=8)
    sizes.set_xlabel("cut k (the device runs stages 1..k and sends the output)")
    sizes.set_ylabel("bytes sent at the cut (KiB)")
    sizes.set_title("What crosses the link at each cut")
    sizes.grid(axis="y", alpha=0.3)
    sizes.margins(y=0.15)
    return figure


def prediction_figure(
    tasks: Sequence[TaskRecord],
    predictions: Sequence[PredictionRecord],
    devices: Sequence[str],
) -> Figure:
    """Each task's predicted delay against its measured delay."""
    figure = Figure(figsize=(6.5, 5.5), layout="constrained")
    predicted = {p.task_id: p.delay_s for p in predictions}
    pairs = [
        (t.device, predicted[t.task_id] * 1e3, t.delay_s * 1e3)
        for t in tasks
        if t.task_id in predicted
    ]
    if not pairs:
        return _empty(figure, "no task has both a prediction and a measurement")
    axes = figure.add_subplot()
    colours = device_colours(devices)
    for i, device in enumerate(devices):
        own = [(p, m) for d, p, m in pairs if d == device]
        if own:
            axes.scatter(
                [p for p, _ in own],
                [m for _, m in own],
                color=colours[device],
                marker=_MARKERS[i % len(_MARKERS)],
                label=device,
                alpha=0.75,
                s=28,
            )
    values = [v for _, p, m in pairs for v in (p, m) if v > 0]
    low, high = min(values) / 1.3, max(values) * 1.3
    axes.plot(
        [low, high],
        [low, high],
        color="black",
        linewidth=1,
        label="measured = predicted",
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    _plain_log(axes.xaxis)
    _plain_log(axes.yaxis)
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.set_xlabel("predicted delay (ms)")
    axes.set_ylabel("measured delay (ms)")
    axes.set_title("Prediction against measurement, per task")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=9, loc="best")
    return figure


def cuts_figure(
    cuts: Mapping[str, int], stage_names: Sequence[str], devices: Sequence[str]
) -> Figure:
    """The chosen partition: which stages each device runs and which the BS runs."""
    figure = Figure(
        figsize=(9, 0.9 + 0.55 * max(len(devices), 1)), layout="constrained"
    )
    shown = [device for device in devices if device in cuts]
    if not shown or not stage_names:
        return _empty(figure, "no plan recorded")
    axes = figure.add_subplot()
    count = len(stage_names)
    for row, device in enumerate(shown):
        cut = cuts[device]
        axes.barh(
            [row] * count,
            [1] * count,
            left=range(count),
            color=["#4c72b0" if stage < cut else "#55a868" for stage in range(count)],
            edgecolor="white",
        )
        axes.text(count + 0.15, row, f"k={cut}", va="center", fontsize=9)
    axes.set_yticks(range(len(shown)), shown)
    axes.invert_yaxis()
    axes.set_xticks(np.arange(count) + 0.5, stage_names, fontsize=8)
    axes.set_xlim(0, count + 0.9)
    axes.set_title("Chosen cuts: stages run on the device and on the BS", fontsize=10)
    figure.legend(
        handles=[
            Patch(color="#4c72b0", label="on the device"),
            Patch(color="#55a868", label="on the BS"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=8,
        frameon=False,
    )
    return figure


def _x_positions(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = [str(v) for v in values]
    return [float(i) for i in range(len(labels))], labels


def comparison_figure(comparison: Comparison) -> Figure:
    """Mean and p95 delay against the swept parameter, one line per group.

    Error bars are 95 % confidence intervals of the per-run value over the
    runs of a point (the seeds).
    """
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    if not comparison.points:
        return _empty(figure, "no completed runs to compare")
    lines = comparison.line_labels
    panels = figure.subplots(1, 2, sharey=False)
    labels: list[str] | None
    if comparison.x_name is None:
        # Nothing but the lines varies: one x position per line.
        positions, labels = [float(i) for i in range(len(lines))], list(lines)
        spread = 0.0
    else:
        positions, labels = _x_positions(comparison.x_values)
        spread = (max(positions) - min(positions) or 1.0) * 0.015
    where = {
        repr(v): pos for v, pos in zip(comparison.x_values, positions, strict=False)
    }
    for axes, metric, title in zip(
        panels, ("mean", "p95"), ("Mean delay", "95th percentile delay"), strict=True
    ):
        for i, line in enumerate(lines):
            points = [
                p for p in comparison.points if p.line == line and p.metric == metric
            ]
            if comparison.x_name is None:
                x = [positions[i]] * len(points)
            else:
                points.sort(key=lambda p: where[repr(p.x)])
                x = [
                    where[repr(p.x)] + (i - (len(lines) - 1) / 2) * spread
                    for p in points
                ]
            y = np.asarray([p.value_s for p in points]) * 1e3
            # A delay is never negative: a t interval reaching below 0 is cut.
            low = y - np.maximum(np.asarray([p.low_s for p in points]) * 1e3, 0.0)
            high = np.asarray([p.high_s for p in points]) * 1e3 - y
            axes.errorbar(
                x,
                y,
                yerr=[low, high],
                label=line,
                marker=_MARKERS[i % len(_MARKERS)],
                color=_PALETTE[i % len(_PALETTE)],
                capsize=4,
                linewidth=1.6,
            )
            # Without an x axis the points stand alone: write their values.
            labelled = zip(x, y, strict=True) if comparison.x_name is None else ()
            for x_value, y_value in labelled:
                axes.annotate(
                    f"{y_value:.3g}",
                    (x_value, y_value),
                    xytext=(5, 3),
                    textcoords="offset points",
                    fontsize=7,
                    color=_PALETTE[i % len(_PALETTE)],
                )
        if labels is not None:
            axes.set_xticks(positions, labels, fontsize=8)
            axes.set_xlim(min(positions) - 0.5, max(positions) + 0.5)
        axes.set_xlabel(comparison.x_name or comparison.line_name)
        axes.set_ylabel(f"{title.lower()} per run (ms)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if min(p.low_s for p in comparison.points) > 0:
            axes.set_yscale("log")
            _plain_log(axes.yaxis)
        else:
            axes.set_ylim(bottom=0)
    replicates = sorted({p.replicates for p in comparison.points})
    figure.suptitle(
        f"{comparison.title}: 95 % CI over {'/'.join(map(str, replicates))} "
        f"run(s) per point ({comparison.replicate_name or 'repeats'}); "
        "intervals cut at 0 ms",
        fontsize=11,
    )
    panels[1].legend(fontsize=9, title=comparison.line_name, title_fontsize=9)
    return figure


def cut_rate_figure(comparison: Comparison) -> Figure:
    """The cut each algorithm chose for a device against the device's link rate."""
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    if not comparison.cut_points:
        return _empty(figure, "no cuts recorded")
    axes = figure.add_subplot()
    lines = comparison.line_labels
    for i, line in enumerate(lines):
        own = [c for c in comparison.cut_points if c.line == line]
        if not own:
            continue
        # Spread identical points a little so every line stays visible.
        offset = (i - (len(lines) - 1) / 2) * 0.08
        axes.scatter(
            [c.rate_mbps * math.exp(offset * 0.5) for c in own],
            [c.cut + offset for c in own],
            label=line,
            marker=_MARKERS[i % len(_MARKERS)],
            color=_PALETTE[i % len(_PALETTE)],
            s=45,
            alpha=0.8,
        )
    names = comparison.stage_names
    if names:
        axes.set_yticks(
            range(len(names) + 1),
            ["0 (input)"] + [f"{k} ({n})" for k, n in enumerate(names, start=1)],
            fontsize=8,
        )
    axes.set_xscale("log")
    _plain_log(axes.xaxis)
    axes.set_xlabel("device link rate (Mbit/s)")
    axes.set_ylabel("cut k chosen")
    axes.set_title("Cut chosen against link rate (every device of every run)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=9, title=comparison.line_name, title_fontsize=9)
    return figure


def stage_cost_figure(profile: NodeProfile, codecs: Sequence[str]) -> Figure:
    """One node's profile: time per stage, and bytes at each cut per codec.

    The upper axes show each stage's median time (bar) and 95th percentile
    (tick); the lower ones the bytes that cross the link at every cut ``k``
    (``k = 0`` the input) in each codec, on a log scale.
    """
    figure = Figure(figsize=(8.0, 6.0), layout="constrained")
    if not profile.stages:
        return _empty(figure, "no stages")
    timing, sizes = figure.subplots(2, 1)
    names = [stage.name for stage in profile.stages]
    positions = np.arange(1, len(names) + 1)
    medians_ms = [stage.median_s * 1e3 for stage in profile.stages]
    p95s_ms = [stage.p95_s * 1e3 for stage in profile.stages]
    timing.bar(positions, medians_ms, color=PART_COLOURS["device compute"],
               label="median")  # fmt: skip
    timing.scatter(positions, p95s_ms, marker="_", s=200, color="black",
                   label="p95", zorder=3)  # fmt: skip
    timing.set_xticks(positions, names, rotation=45, ha="right")
    timing.set_ylabel("time (ms)")
    timing.set_title(f"{profile.model} on {profile.node}: time per stage")
    timing.legend(loc="upper right")

    cuts = list(range(profile.num_stages + 1))
    for index, codec in enumerate(codecs):
        counts = [max(profile.cut_bytes(cut, codec), 1) for cut in cuts]
        sizes.plot(cuts, counts, marker=_MARKERS[index % len(_MARKERS)],
                   color=_PALETTE[index % len(_PALETTE)], label=codec)  # fmt: skip
    sizes.set_yscale("log")
    _plain_log(sizes.yaxis)
    sizes.set_xticks(cuts, ["input", *names], rotation=45, ha="right")
    sizes.set_xlabel("cut k (after this stage)")
    sizes.set_ylabel("bytes sent")
    sizes.set_title("bytes crossing the link at each cut")
    sizes.legend(loc="upper right")
    return figure
