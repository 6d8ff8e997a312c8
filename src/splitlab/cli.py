"""The ``splitlab`` command line.

Every command is a thin layer over the Python API: it parses options,
calls the API, and presents the result.  A user's mistake becomes one line
on standard error and the exit code of its :mod:`splitlab.errors` class;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from splitlab.codec import CODECS
from splitlab.data import load_held_out, load_inputs
from splitlab.errors import ConfigError, SplitlabError, TestbedError
from splitlab.experiment import (
    default_workspace,
    mark_abandoned,
    prepare_weights,
    resumable,
    run_scenario,
    store_path,
)
from splitlab.measure import Effort, TestbedCheck
from splitlab.models import MODELS, StagedModel, build_model
from splitlab.netns import NetnsTestbed, remove_networks
from splitlab.plan import (
    ALGORITHMS,
    Algorithm,
    FixedScheme,
    PlanningProblem,
    make_plan,
)
from splitlab.profile import NodeProfile, profile_model
from splitlab.report import RunSummary, summarise
from splitlab.results import ResultStore
from splitlab.scenario import Scenario, load_scenario
from splitlab.schedule import SCHEDULERS
from splitlab.testbed import teardown
from splitlab.usercode import is_onnx_file
from splitlab.weights import load_trained

# Wide enough for the summary table when the output is not a terminal.
console = Console(width=max(Console().width, 110))
errors = Console(stderr=True)


def _ms(value_s: float) -> str:
    return "-" if math.isnan(value_s) else f"{value_s * 1e3:.1f}"


class _Command(click.Group):
    """Turns splitlab's errors into one line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SplitlabError as error:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            errors.print(
                f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True
            )
            sys.exit(error.exit_code)


@click.group(cls=_Command)
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, debug: bool) -> None:
    """splitlab: partition models between devices and a base station, and
    measure every task's delay."""
    ctx.obj = {"debug": debug}
    # Progress reaches a pipe (``| tee run.log``) as it happens.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _scenario(
    path: str | None,
    *,
    algorithm: str | None = None,
    scheduler: str | None = None,
    tasks: int | None = None,
    data: Path | None = None,
    objective: str | None = None,
) -> Scenario:
    scenario = load_scenario(path)
    overrides: dict[str, Any] = {
        "algorithm": algorithm,
        "scheduler": scheduler,
        "objective": objective,
        "workload.tasks_per_device": tasks,
    }
    if data is not None:
        overrides["data.dataset"] = "cifar10"
        overrides["data.dir"] = str(data)
    return scenario.with_overrides(**overrides)


# The codecs 'splitlab profile' shows when none is named.
PROFILE_CODECS = ("fp32", "fp16", "int8", "int8+zstd")

_workspace_option = click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the results store (default: $SPLITLAB_WORKSPACE or ./workspace).",
)


@main.command()
@click.argument("scenario", required=False)
@click.option(
    "--algorithm",
    default=None,
    help="A registered algorithm (see 'splitlab algorithms'), FILE.py:NAME for "
    "your own, or entrypoint:NAME.",
)
@click.option("--scheduler", type=click.Choice(sorted(SCHEDULERS)), default=None)
@click.option(
    "--objective",
    type=click.Choice(["total", "variance", "max"]),
    default=None,
    help="What the algorithm minimises (default: the scenario's, else total).",
)
@click.option(
    "--tasks", type=click.IntRange(min=1), default=None, help="Tasks per device."
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="A local CIFAR-10 folder (binary or python batches).",
)
@click.option(
    "--limit",
    "limit_mechanism",
    default=None,
    type=click.Choice(["cgroup-v2", "cgroup-v1", "cpulimit", "sigstop"]),
    help="Force a CPU limit mechanism (default: the best available).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "netns", "ssh"]),
    default=None,
    help="Realise the testbed as local processes, Linux network namespaces or "
    "real boards over SSH (default: the scenario's backend).",
)
@click.option(
    "--resume",
    type=int,
    default=None,
    metavar="RUN",
    help="Continue the incomplete run RUN: its unfinished tasks only.",
)
@click.option(
    "--codec",
    type=click.Choice(CODECS),
    default=None,
    help="Send every device's cut tensor in this codec (overrides the scenario).",
)
@_workspace_option
def run(
    *,
    backend: str | None,
    resume: int | None,
    codec: str | None,
    scenario: str | None,
    algorithm: str | None,
    scheduler: str | None,
    objective: str | None,
    tasks: int | None,
    data: Path | None,
    limit_mechanism: Any,
    workspace: Path | None,
) -> None:
    """Run SCENARIO (a YAML file; the bundled default when omitted)."""
    if resume is not None:
        if scenario or algorithm or scheduler or objective or tasks or data or codec:
            raise ConfigError(
                "--resume continues a run with its own scenario: give no "
                "scenario, --algorithm, --scheduler, --objective, --tasks, --data "
                "or --codec with it"
            )
        loaded = resumable(workspace, resume)
    else:
        loaded = _scenario(
            scenario,
            algorithm=algorithm,
            scheduler=scheduler,
            tasks=tasks,
            data=data,
            objective=objective,
        )
        if codec is not None:
            loaded = loaded.with_codec(codec)
    if backend is not None:
        loaded = loaded.with_overrides(backend=backend)
    console.print(
        f"[bold]{loaded.name}[/]: {_count(len(loaded.devices), 'device')}, model "
        f"{loaded.model}, algorithm {loaded.algorithm}, scheduler {loaded.scheduler}"
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
    )
    bars: dict[str, Any] = {}

    def say(text: str) -> None:
        progress.console.print(text, highlight=False)

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "connected":
            say(_connected_text(event))
        elif kind == "profiled":
            say(f"{event['node']} profiled: whole model {_ms(event['total_s'])} ms")
        elif kind == "plan":
            say(_plan_text(event))
        elif kind == "started":
            for device in loaded.devices:
                bars[device.name] = progress.add_task(
                    device.name, total=loaded.workload.tasks_per_device
                )
        elif kind == "task":
            progress.update(bars[event["node"]], completed=event["done"])
        elif kind == "device_failed":
            say(f"[red]{event['node']} failed:[/] {event['reason']}")
        elif kind == "verified":
            closeness = f"max |diff| {event['max_abs_diff']:.2e}"
            if event.get("min_cosine") is not None:
                closeness = f"lowest cosine {event['min_cosine']:.7f}"
            say(
                f"verified {event['matched']}/{event['total']} tasks against the "
                f"unsplit model ({closeness})"
            )
            for check in event.get("codecs", ()):
                say(
                    f"{check['codec']}: {check['tasks']} tasks compared with "
                    f"fp32, top-1 agreement {check['agreement']:.1%}, accuracy "
                    f"change {check['accuracy_change'] * 100:+.1f} points"
                )

    # SIGTERM stops a run like Ctrl-C does: the testbed is torn down and the
    # run is marked incomplete.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with progress:
            outcome = run_scenario(
                loaded,
                workspace=workspace,
                on_event=on_event,
                progress=True,
                limit_mechanism=limit_mechanism,
                resume=resume,
            )
    except KeyboardInterrupt:
        # The testbed is down and the run marked incomplete by now.
        errors.print(
            "[bold red]interrupted:[/] the run is incomplete; its finished tasks "
            "are in the store ('splitlab runs' lists it; 'splitlab run --resume "
            "RUN' runs the rest)",
            highlight=False,
        )
        sys.exit(5)
    weights = outcome.weights
    source = "trained now" if weights.trained_now else "cached"
    if is_onnx_file(loaded.model):
        source = "of the ONNX file"
    if weights.test_accuracy is not None:
        quality = f"test accuracy {weights.test_accuracy:.1%}"
    elif is_onnx_file(loaded.model):
        quality = "output not class scores, no accuracy"
    else:
        quality = "published weights, not trained by splitlab"
    console.print(f"weights {source}: {weights.path} ({quality})")
    with ResultStore(outcome.store) as store:
        _print_summary(summarise(store, outcome.run_id))
    if outcome.check is not None:
        _print_check(outcome.check, title="testbed before the run")
    console.print(f"results: {outcome.store} (run {outcome.run_id})")
    if outcome.status != "completed":
        errors.print(f"[bold red]run incomplete:[/] {outcome.reason}", highlight=False)
        sys.exit(5)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _plain(docstring_line: str) -> str:
    """A docstring's first line without its reStructuredText literals."""
    return docstring_line.replace("``", "")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _connected_text(event: dict[str, Any]) -> str:
    share, memory, link = event["cpu_share"], event["memory_bytes"], event["link"]
    seen = "no CPU quota visible" if share is None else f"CPU share {share:.2f}"
    if memory is not None:
        seen += f", memory {memory / 2**20:.0f} MiB"
    return (
        f"{event['node']} connected (pid {event['pid']}, {seen}; link "
        f"{link['latency_ms']:g} ms, {link['rate_mbps']:g} Mbit/s, jitter "
        f"{link['jitter_ms']:g} ms)"
    )


def _plan_text(event: dict[str, Any]) -> str:
    names = event["stage_names"]
    parts = []
    for device, cut in event["cuts"].items():
        where = (
            "local only"
            if cut == len(names)
            else ("offload all" if cut == 0 else f"after {names[cut - 1]}")
        )
        parts.append(f"{device}: k={cut} ({where})")
    return (
        f"plan by {event['algorithm']}: "
        + ", ".join(parts)
        + f"; predicted mean delay {_ms(event['predicted_mean_s'])} ms"
    )


def _print_summary(summary: RunSummary) -> None:
    run = summary.run
    table = Table(
        title=f"run {run.run_id} ({run.name}): {run.algorithm}, {run.scheduler}, "
        f"{run.status}. Delays in ms: mean, p50, p95, the mean of each part, the "
        "predicted mean, and the median relative error of the prediction.",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header in ("device", "k", "tasks", "mean", "p50", "p95", "device", "link",
                   "BS wait", "BS", "predicted", "error"):  # fmt: skip
        table.add_column(header, justify="right", no_wrap=True)
    for row in summary.rows:
        table.add_row(
            row.group,
            "" if row.cut is None else str(row.cut),
            f"{row.tasks}/{row.expected}",
            _ms(row.mean_s),
            _ms(row.p50_s),
            _ms(row.p95_s),
            _ms(row.device_s),
            _ms(row.transmission_s),
            _ms(row.bs_wait_s),
            _ms(row.bs_s),
            _ms(row.predicted_mean_s),
            "-" if math.isnan(row.prediction_error) else f"{row.prediction_error:.0%}",
            end_section=row.group == summary.rows[-2].group,
        )
    console.print(table)
    accuracy = "accuracy " + (
        "-" if summary.accuracy is None else f"{summary.accuracy:.1%}"
    )
    if summary.min_cosine is not None:
        accuracy = f"lowest cosine to the unsplit embedding {summary.min_cosine:.7f}"
    tasks = summary.rows[-1].tasks
    if summary.verified + summary.compared == tasks:
        checked = (
            f"split output equals the unsplit model for {summary.matched} of "
            f"{summary.verified} tasks"
        )
        if summary.compared:
            checked += f" ({summary.compared} sent in a lossy codec are compared)"
    else:
        unchecked = tasks - summary.verified - summary.compared
        checked = f"{unchecked} of {tasks} tasks not verified"
    missed = ""
    if summary.deadline_misses is not None:
        missed = f"; {summary.deadline_misses} of {tasks} tasks missed the deadline"
    console.print(
        f"{checked}; {accuracy}{missed}; CPU limits by "
        f"{', '.join(summary.limit_mechanisms) or '-'}"
    )
    for check in summary.codec_checks:
        console.print(
            f"codec {check.codec}: {check.tasks} tasks against fp32: top-1 "
            f"agreement {check.agreement:.1%}, accuracy change "
            f"{check.accuracy_change * 100:+.1f} points, max |change| "
            f"{check.max_abs_change:.3g} ({check.max_relative_change:.2%} of the "
            "largest output)"
        )
    if run.reason:
        console.print(f"reason: {run.reason}")
    if summary.usage or summary.energy_per_task_j:
        _print_usage(summary)


def _print_usage(summary: RunSummary) -> None:
    table = Table("node", "samples", "CPU mean", "CPU peak", "RSS peak MB",
                  "RTT p50 ms", "energy/task J", box=box.SIMPLE_HEAD,
                  title="resources: CPU in cores; modelled energy per task",
                  title_justify="left")  # fmt: skip
    usage = {row.node: row for row in summary.usage}
    for node in [*usage, *(d for d in summary.energy_per_task_j if d not in usage)]:
        row = usage.get(node)
        energy = summary.energy_per_task_j.get(node)
        table.add_row(
            node,
            "-" if row is None else str(row.samples),
            "-" if row is None or math.isnan(row.cpu_mean) else f"{row.cpu_mean:.2f}",
            "-" if row is None or math.isnan(row.cpu_peak) else f"{row.cpu_peak:.2f}",
            "-" if row is None else f"{row.rss_peak_bytes / 2**20:.0f}",
            "-" if row is None else _ms(row.rtt_median_s),
            "-" if energy is None else f"{energy:.3f}",
        )
    console.print(table)


@main.command()
@click.argument("run_id", type=int, required=False)
@click.option("--tasks", "per_task", is_flag=True,
              help="Also list every task, measured beside predicted.")  # fmt: skip
@_workspace_option
def summary(run_id: int | None, per_task: bool, workspace: Path | None) -> None:
    """Print the summary of RUN_ID (the latest run when omitted)."""
    path = store_path(workspace, existing=True)
    with ResultStore(path) as store:
        chosen = run_id if run_id is not None else store.latest_run_id()
        if chosen is None:
            raise ConfigError(f"{path} holds no runs")
        if per_task:
            _print_tasks(store, chosen)
        _print_summary(summarise(store, chosen))
        for _, node, kind, detail in store.events(chosen):
            if node == "testbed" and kind == "check":
                _print_check(
                    TestbedCheck.from_json(detail), title="testbed before the run"
                )


def _print_tasks(store: ResultStore, run_id: int) -> None:
    predicted = {p.task_id: p for p in store.predictions(run_id)}
    table = Table("task", "device", "k", "measured ms", "predicted ms", "error",
                  "device ms", "link ms", "BS wait ms", "BS ms", "same as whole",
                  box=box.SIMPLE_HEAD, title_justify="left",
                  title=f"run {run_id}: every task, measured parts; predicted "
                  "total beside measured")  # fmt: skip
    for task in store.tasks(run_id):
        guess = predicted.get(task.task_id)
        error = (
            f"{(guess.delay_s - task.delay_s) / task.delay_s:+.0%}"
            if guess is not None and task.delay_s > 0
            else "-"
        )
        same = {None: "-", True: "yes", False: "NO"}[task.matches_unsplit]
        table.add_row(
            str(task.task_id), task.device, str(task.cut), _ms(task.delay_s),
            _ms(guess.delay_s) if guess else "-", error,
            _ms(task.device_wait_s + task.device_s), _ms(task.transmission_s),
            _ms(task.bs_wait_s), _ms(task.bs_s), same,
        )  # fmt: skip
    console.print(table)


@main.group()
def testbed() -> None:
    """Inspect and clean up the testbed."""


@testbed.command()
@click.option("--prefix", default=None, help="Only the run with this prefix.")
@_workspace_option
def down(prefix: str | None, workspace: Path | None) -> None:
    """Stop every node process and remove every control group and network
    namespace a run left.

    Runs of the workspace's store still marked running, whose base station
    is gone, are marked incomplete.
    """
    for line in [*teardown(prefix), *remove_networks(prefix)]:
        console.print(line, highlight=False)
    path = store_path(workspace)
    if path.exists():
        with ResultStore(path) as store:
            for run_id in mark_abandoned(store):
                console.print(f"marked run {run_id} incomplete")
    console.print("testbed down")


@testbed.command()
@click.argument("scenario", required=False)
@click.option(
    "--limit",
    "limit_mechanism",
    default=None,
    type=click.Choice(["cgroup-v2", "cgroup-v1", "cpulimit", "sigstop"]),
    help="Force a CPU limit mechanism (default: the best available).",
)
@_workspace_option
def check(scenario: str | None, limit_mechanism: Any, workspace: Path | None) -> None:
    """Build SCENARIO's netns testbed, measure it, and tear it down.

    Every link's latency, rate each way and loss, and every device's CPU
    share, configured beside measured; exits 4 when one is off by more than
    its tolerance (5 % for rates, latency and CPU, 1 point for loss).
    """
    loaded = load_scenario(scenario).with_overrides(backend="netns")
    prefix = f"check{os.getpid()}"
    folder = store_path(workspace).parent / "runs" / prefix
    signal.signal(signal.SIGTERM, _interrupt)
    with console.status("building the testbed and measuring it"):
        bed = NetnsTestbed(
            loaded, prefix=prefix, run_dir=folder, prefer=limit_mechanism
        )
        try:
            result = bed.check(Effort())
        finally:
            bed.close()
    _print_check(result, title=f"{loaded.name} on the netns testbed")
    console.print(f"scripts: {folder}", highlight=False)
    if not result.passed:
        raise TestbedError("some measured values are off by more than the tolerance")


_QUANTITIES = {
    "latency_ms": "latency (ms, one way)",
    "uplink_mbps": "rate up (Mbit/s)",
    "downlink_mbps": "rate down (Mbit/s)",
    "uplink_loss_percent": "loss up (%)",
    "downlink_loss_percent": "loss down (%)",
    "cpu_share": "CPU share",
}


def _print_check(result: TestbedCheck, *, title: str) -> None:
    table = Table("node", "quantity", "configured", "measured", "error", "",
                  title=title, title_justify="left",
                  box=box.SIMPLE_HEAD)  # fmt: skip
    for item in result.comparisons:
        error = f"{item.error:+.2f}" if item.absolute else f"{item.error:+.1%}"
        table.add_row(
            item.node,
            _QUANTITIES.get(item.quantity, item.quantity),
            f"{item.configured:.4g}",
            f"{item.measured:.4g}",
            error,
            "ok" if item.within else "[red]off[/]",
        )
    console.print(table)


@main.command()
@_workspace_option
def runs(workspace: Path | None) -> None:
    """List the runs in the workspace's store."""
    path = store_path(workspace, existing=True)
    table = Table("run", "started", "scenario", "algorithm", "scheduler", "tasks",
                  "mean ms", "status", "reason", box=box.SIMPLE_HEAD)  # fmt: skip
    with ResultStore(path) as store:
        for record in store.runs():
            delays = [task.delay_s for task in store.tasks(record.run_id)]
            table.add_row(
                str(record.run_id),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started_at)),
                record.name,
                record.algorithm,
                record.scheduler,
                str(len(delays)),
                _ms(sum(delays) / len(delays)) if delays else "-",
                record.status,
                record.reason or "",
            )
    console.print(table)


def _model_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in MODELS or is_onnx_file(value):
        return value
    raise click.BadParameter(
        f"{value!r} is neither a model ({', '.join(sorted(MODELS))}) nor a "
        "path ending in .onnx"
    )


def _sample_shape(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(part) for part in value.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise click.BadParameter(f"{value!r} is not a shape such as 3x64x64")
    return shape


@main.command()
@click.argument("model", callback=_model_name)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "--codec",
    "codecs",
    type=click.Choice(CODECS),
    multiple=True,
    help="A codec whose bytes at each cut to show; repeat for several "
    "(default: fp32, fp16, int8, int8+zstd).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the profile as JSON to this file.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw time and bytes per stage to this PNG file.",
)
@click.option(
    "--input-shape",
    callback=_sample_shape,
    default=None,
    help="One sample's shape for an ONNX model with dynamic dimensions, such "
    "as 3x64x64 (default: its fixed shape, else 3x32x32).",
)
def profile(
    *,
    model: str,
    warmup: int,
    repeats: int,
    codecs: tuple[str, ...],
    json_path: Path | None,
    plot_path: Path | None,
    input_shape: tuple[int, ...] | None,
) -> None:
    """Profile every stage of MODEL on this machine (one thread, batch of one).

    MODEL is a registered model or a path to an ONNX file.  An image model's
    sample is a real held-out MNIST image, with the weights the default
    scenario trains if they are cached, else its initial weights; a text
    model profiles its example sentence; an ONNX file a zero sample.
    """
    import torch

    from splitlab.weights import load_weights, weights_path

    torch.set_num_threads(1)
    codecs = codecs or PROFILE_CODECS
    staged: StagedModel
    if is_onnx_file(model):
        from splitlab.onnxgraph import OnnxStagedModel

        staged = OnnxStagedModel(Path(model), input_shape=input_shape)
        sample = staged.example_input()
    elif input_shape is not None:
        raise click.BadParameter(
            "only an ONNX model takes an input shape", param_hint="--input-shape"
        )
    elif MODELS[model].dataset is not None:
        staged = build_model(model).eval()
        sample = staged.example_input()
    else:
        defaults = load_scenario().training
        data = load_held_out("mnist", data_dir=None,
                             test_fraction=defaults.test_fraction, seed=1)  # fmt: skip
        staged = build_model(model, classes=len(data.classes)).eval()
        cached = weights_path(model, "mnist", epochs=defaults.epochs, seed=1)
        if cached.is_file():
            load_weights(staged, cached)
            console.print(f"weights: {cached}")
        else:
            console.print("weights: initial (none cached; 'splitlab run' trains them)")
        sample = torch.tensor(data.images[:1])
    result = profile_model(
        staged, sample, node="local", warmup=warmup, repeats=repeats, codecs=codecs
    )
    _print_profile(result, codecs)
    if json_path is not None:
        from splitlab.profile import profile_to_dict

        json_path.write_text(json.dumps(profile_to_dict(result), indent=2))
        console.print(f"wrote {json_path}")
    if plot_path is not None:
        from splitlab.plot import png_bytes, stage_cost_figure

        plot_path.write_bytes(png_bytes(stage_cost_figure(result, codecs)))
        console.print(f"wrote {plot_path}")


def _print_profile(result: NodeProfile, codecs: Sequence[str] = ("fp32",)) -> None:
    table = Table(
        title=f"{result.model} on {result.node}: time per stage, MFLOPs, weights, "
        "peak activation memory, and the bytes sent at a cut after the stage in "
        "each codec",
        title_justify="left",
    )
    headers = ["k", "stage", "median ms", "p95 ms", "MFLOPs", "param bytes",
               "peak act. bytes", *codecs]  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "stage" else "right")
    table.add_row(
        "0", "(input)", "", "", "", "", "",
        *(str(result.cut_bytes(0, codec)) for codec in codecs),
    )  # fmt: skip
    for index, stage in enumerate(result.stages, start=1):
        table.add_row(
            str(index),
            stage.name,
            f"{stage.median_s * 1e3:.3f}",
            f"{stage.p95_s * 1e3:.3f}",
            f"{stage.flops / 1e6:.2f}",
            str(stage.param_bytes),
            str(stage.peak_activation_bytes),
            *(str(result.cut_bytes(index, codec)) for codec in codecs),
        )
    console.print(table)


@main.command()
@click.argument("prompt")
@click.option("--cut", type=click.IntRange(min=0), default=2, show_default=True,
              help="Blocks the device runs (0 to 4).")  # fmt: skip
@click.option("--tokens", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Seed of the training run whose weights are used.")  # fmt: skip
def generate(prompt: str, cut: int, tokens: int, seed: int) -> None:
    """Generate text with gpt-tiny split at CUT between a device and a BS.

    The device embeds each token and runs blocks 1..CUT, the base station the
    rest and the head; both keep their own blocks' KV caches and only the
    newest token's hidden state crosses, over loopback TCP.  gpt-tiny is
    trained on first use (about a minute) and cached.
    """
    import secrets

    import torch

    from splitlab.decoder import ensure_decoder, generate_split, load_decoder

    torch.set_num_threads(1)
    with console.status("training gpt-tiny (first use only)"):
        weights = ensure_decoder(seed=seed)
    model = load_decoder(weights.path)
    result = generate_split(
        model, prompt, cut=cut, tokens=tokens, secret=secrets.token_bytes(32)
    )
    console.print(f"[bold]{result.prompt}[/]{result.text}", highlight=False)
    table = Table(
        title=f"gpt-tiny, cut after block {cut}: per token, times in ms",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header in ("#", "token", "device", "link", "BS", "bytes sent"):
        table.add_column(header, justify="right")
    for index, token in enumerate(result.tokens, start=1):
        table.add_row(
            str(index),
            repr(model.decode([token.token])),
            f"{token.device_s * 1e3:.3f}",
            f"{token.transmission_s * 1e3:.3f}",
            f"{token.bs_s * 1e3:.3f}",
            str(token.sent_bytes),
        )
    console.print(table)
    later = sorted({token.sent_bytes for token in result.tokens[1:]})
    console.print(
        f"bytes sent: the prompt {result.tokens[0].sent_bytes}, each later token "
        f"{', '.join(map(str, later)) or '-'}"
    )
    console.print(
        f"weights {weights.path} (training loss {weights.loss:.3f} nats per character)"
    )


_planning_options = [
    click.argument("scenario", required=False),
    click.option(
        "--algorithm",
        default=None,
        help="A registered algorithm (see 'splitlab algorithms'), FILE.py:NAME "
        "for your own, or entrypoint:NAME.",
    ),
    click.option("--scheduler", type=click.Choice(sorted(SCHEDULERS)), default=None),
    click.option(
        "--objective",
        type=click.Choice(["total", "variance", "max"]),
        default=None,
        help="What the algorithm minimises (default: the scenario's, else total).",
    ),
    click.option("--tasks", type=click.IntRange(min=1), default=None),
    _workspace_option,
]


def _with_planning_options(command: Any) -> Any:
    for option in reversed(_planning_options):
        command = option(command)
    return command


@main.command()
@_with_planning_options
def plan(
    *,
    scenario: str | None,
    algorithm: str | None,
    scheduler: str | None,
    objective: str | None,
    tasks: int | None,
    workspace: Path | None,
) -> None:
    """Print the scheme and predicted delays for SCENARIO without running it.

    Profiles come from the newest run of the same model in the workspace;
    without one, the model is profiled here and each device's times are
    this machine's divided by the device's CPU share.
    """
    loaded = _scenario(
        scenario,
        algorithm=algorithm,
        scheduler=scheduler,
        tasks=tasks,
        objective=objective,
    )
    _predict(loaded, workspace, algorithm=loaded.algorithm, per_task=False)


@main.command()
@_with_planning_options
@click.option(
    "--cuts",
    default=None,
    help="Play this scheme instead of planning one: DEVICE=K,DEVICE=K,...",
)
@click.option("--per-task", is_flag=True, help="Print every task's prediction.")
def simulate(
    *,
    scenario: str | None,
    algorithm: str | None,
    scheduler: str | None,
    objective: str | None,
    tasks: int | None,
    workspace: Path | None,
    cuts: str | None,
    per_task: bool,
) -> None:
    """Predict every task's delay for SCENARIO with the discrete-event simulator.

    The scheme is the scenario's algorithm's, or the one given with --cuts;
    profiles come from where 'splitlab plan' takes them.
    """
    loaded = _scenario(
        scenario,
        algorithm=algorithm,
        scheduler=scheduler,
        tasks=tasks,
        objective=objective,
    )
    chosen: str | Algorithm = loaded.algorithm
    if cuts is not None:
        chosen = FixedScheme(_parse_cuts(cuts))
    _predict(loaded, workspace, algorithm=chosen, per_task=per_task)


def _parse_cuts(text: str) -> dict[str, int]:
    cuts = {}
    for part in text.split(","):
        device, equals, cut = part.partition("=")
        if not equals or not cut.strip().lstrip("-").isdigit():
            raise ConfigError(f"--cuts: {part!r} is not DEVICE=K (K a whole number)")
        cuts[device.strip()] = int(cut)
    return cuts


def _predict(
    loaded: Scenario,
    workspace: Path | None,
    *,
    algorithm: str | Algorithm,
    per_task: bool,
) -> None:
    bs_profile, device_profiles, source = _planning_profiles(loaded, workspace)
    data = load_inputs(
        loaded.data.dataset,
        data_dir=loaded.data.dir,
        test_fraction=loaded.training.test_fraction,
        seed=loaded.seed,
    )
    problem = PlanningProblem(
        device_profiles=device_profiles,
        bs_profile=bs_profile,
        links={device.name: device.link.spec() for device in loaded.devices},
        tasks=loaded.tasks(num_samples=len(data.labels)),
        scheduler=loaded.scheduler,
        objective=loaded.objective,
        workers=loaded.base_station.workers,
        device_memory_bytes={d.name: d.memory_bytes for d in loaded.devices},
        priorities={d.name: d.priority for d in loaded.devices},
    )
    result = make_plan(algorithm, problem)
    console.print(f"profiles: {source}")
    table = Table(
        title=f"plan by {result.algorithm} ({loaded.scheduler})", title_justify="left"
    )
    for header in ("device", "cut", "after stage", "mean ms", "max ms",
                   "device ms", "link ms", "BS wait ms", "BS ms"):  # fmt: skip
        table.add_column(header, justify="left" if header == "device" else "right")
    for device, cut in result.cuts.items():
        own = [p for p in result.predictions if p.device == device]
        count = len(own)
        table.add_row(
            device,
            str(cut),
            bs_profile.stages[cut - 1].name if cut else "(input)",
            _ms(sum(p.delay_s for p in own) / count),
            _ms(max(p.delay_s for p in own)),
            _ms(sum(p.device_wait_s + p.device_s for p in own) / count),
            _ms(sum(p.transmission_s for p in own) / count),
            _ms(sum(p.bs_wait_s for p in own) / count),
            _ms(sum(p.bs_s for p in own) / count),
        )
    console.print(table)
    if per_task:
        tasks_table = Table("task", "device", "arrival ms", "delay ms", "device ms",
                            "link ms", "BS wait ms", "BS ms", "deadline",
                            box=box.SIMPLE_HEAD)  # fmt: skip
        for p in result.predictions:
            met = (
                "-"
                if p.met_deadline is None
                else ("met" if p.met_deadline else "missed")
            )
            tasks_table.add_row(
                str(p.task_id), p.device, _ms(p.arrival_s), _ms(p.delay_s),
                _ms(p.device_wait_s + p.device_s), _ms(p.transmission_s),
                _ms(p.bs_wait_s), _ms(p.bs_s), met,
            )  # fmt: skip
        console.print(tasks_table)
    missed = [p for p in result.predictions if p.met_deadline is False]
    deadlines = [p for p in result.predictions if p.met_deadline is not None]
    console.print(
        f"predicted mean delay {_ms(result.mean_delay_s)} ms, max "
        f"{_ms(result.max_delay_s)} ms, total {result.total_delay_s:.3f} s"
        + (f"; {len(missed)} of {len(deadlines)} deadlines missed" if deadlines else "")
    )


def _planning_profiles(
    scenario: Scenario, workspace: Path | None
) -> tuple[NodeProfile, dict[str, NodeProfile], str]:
    path = store_path(workspace)
    if path.exists():
        with ResultStore(path) as store:
            for record in reversed(store.runs()):
                profiles = store.profiles(record.run_id)
                bs = profiles.get(scenario.base_station.name)
                if bs is None or bs.model != scenario.model:
                    continue
                devices = {
                    d.name: profiles[d.name]
                    for d in scenario.devices
                    if d.name in profiles
                }
                if len(devices) == len(scenario.devices):
                    return bs, devices, f"measured in run {record.run_id}"

    import torch

    torch.set_num_threads(scenario.base_station.threads)
    weights = prepare_weights(scenario, progress=True)
    data = load_inputs(
        scenario.data.dataset,
        data_dir=scenario.data.dir,
        test_fraction=scenario.training.test_fraction,
        seed=scenario.seed,
    )
    model = load_trained(scenario.model, weights.path, classes=len(data.classes))
    bs = profile_model(
        model,
        torch.from_numpy(data.sample(0)),
        node=scenario.base_station.name,
        warmup=scenario.profiling.warmup,
        repeats=scenario.profiling.repeats,
        codecs=[scenario.device_codec(device.name) for device in scenario.devices],
    )
    devices = {
        device.name: replace(
            bs,
            node=device.name,
            codec=scenario.device_codec(device.name),
            stages=tuple(
                replace(
                    s,
                    median_s=s.median_s / device.share,
                    p95_s=s.p95_s / device.share,
                )
                for s in bs.stages
            ),
        )
        for device in scenario.devices
    }
    return bs, devices, "this machine's, devices scaled by their CPU share"


@main.command()
def models() -> None:
    """List the models splitlab can partition."""
    for info in MODELS.values():
        console.print(f"{info.name:16} {info.description}")


@main.command()
def algorithms() -> None:
    """List the partitioning algorithms."""
    for name, algorithm in sorted(ALGORITHMS.items()):
        doc = (algorithm.__doc__ or "").strip().splitlines()
        console.print(f"{name:14} {_plain(doc[0]) if doc else ''}", highlight=False)


@main.command()
def schedulers() -> None:
    """List the base station schedulers."""
    for name, scheduler in sorted(SCHEDULERS.items()):
        doc = (scheduler.__doc__ or "").strip().splitlines()
        console.print(f"{name:8} {_plain(doc[0]) if doc else ''}", highlight=False)


# Results: reports, sweeps, comparisons, exports, reruns ----------------------


def _existing_store(workspace: Path | None) -> Path:
    path = store_path(workspace, existing=True)
    return path


def _write_html(text: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}")


@main.command()
@click.argument("run_id", type=int, required=False)
@click.option("--sweep", "sweep_name", default=None, help="Report a sweep instead.")
@click.option(
    "--x", "x_field", default=None, help="The swept field on the x axis (--sweep)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The HTML file (default: WORKSPACE/reports/run-N.html or sweep-NAME.html).",
)
@_workspace_option
def report(
    *,
    run_id: int | None,
    sweep_name: str | None,
    x_field: str | None,
    out: Path | None,
    workspace: Path | None,
) -> None:
    """Write a self-contained HTML report of RUN_ID (the latest run when omitted)
    or, with --sweep, of a sweep's cells."""
    from splitlab.errors import ConfigError
    from splitlab.report import compare, comparison_html, run_report_html
    from splitlab.sweep import SweepLog, latest_completed

    path = _existing_store(workspace)
    reports = path.parent / "reports"
    with ResultStore(path) as store:
        if sweep_name is not None:
            with SweepLog(path) as log:
                runs = latest_completed(log.runs(sweep_name))
                known = log.sweeps()
            if not runs:
                raise ConfigError(
                    f"sweep {sweep_name!r} has no completed run in {path} "
                    f"(sweeps: {', '.join(known) or 'none'})"
                )
            comparison = compare(
                store,
                {run.run_id: run.params for run in runs},
                title=f"sweep {sweep_name}",
                x=x_field,
            )
            _print_comparison(comparison)
            _write_html(
                comparison_html(comparison), out or reports / f"sweep-{sweep_name}.html"
            )
            return
        chosen = run_id if run_id is not None else store.latest_run_id()
        if chosen is None:
            raise ConfigError(f"{path} holds no runs")
        _print_summary(summarise(store, chosen))
        _write_html(
            run_report_html(store, chosen), out or reports / f"run-{chosen}.html"
        )


def _print_comparison(comparison: Any) -> None:
    from splitlab.report import comparison_rows

    table = Table(
        title=f"{comparison.title}: delay against {comparison.x_name or '-'}, one "
        f"line per {comparison.line_name}; 95% CI over "
        f"{comparison.replicate_name or 'repeats'} (ms)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header in ("line", comparison.x_name or "-", "metric", "value", "CI low",
                   "CI high", "runs", "run ids"):  # fmt: skip
        table.add_column(header, justify="left" if header == "line" else "right")
    for row in comparison_rows(comparison):
        table.add_row(*row)
    console.print(table)


@main.command()
@click.argument("run_ids", type=int, nargs=-1, required=True)
@click.option("--x", "x_field", default=None, help="The field on the x axis.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write an HTML report with the figures to this file.",
)
@_workspace_option
def compare(
    *,
    run_ids: tuple[int, ...],
    x_field: str | None,
    out: Path | None,
    workspace: Path | None,
) -> None:
    """Compare RUN_IDS by the scenario fields in which they differ."""
    from splitlab.report import compare_runs, comparison_html

    with ResultStore(_existing_store(workspace)) as store:
        comparison = compare_runs(store, list(run_ids), x=x_field)
    _print_comparison(comparison)
    if out is not None:
        _write_html(comparison_html(comparison), out)


@main.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@_workspace_option
def sweep(sweep_file: Path, workspace: Path | None) -> None:
    """Run every cell of SWEEP_FILE that has no completed run yet.

    Interrupted (Ctrl-C), the same command resumes where it stopped.
    """
    from rich.progress import TimeElapsedColumn, TimeRemainingColumn

    from splitlab.sweep import SweepEvent, load_sweep, run_sweep

    spec = load_sweep(sweep_file)
    folder = workspace or default_workspace()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
    )
    bar: list[Any] = []
    counts = {"done": 0, "total": 0}

    def on_event(event: SweepEvent) -> None:
        if event.kind == "planned":
            counts["done"], counts["total"] = event.done, event.done + event.to_run
            progress.console.print(
                f"sweep {spec.name}: {counts['total']} cells, {event.done} already "
                f"done, {event.to_run} to run"
            )
            bar.append(progress.add_task(spec.name, total=event.to_run))
        elif event.kind == "started" and event.cell is not None:
            progress.update(bar[0], description=event.cell.label)
        elif event.kind == "finished" and event.cell is not None:
            counts["done"] += 1
            with ResultStore(folder / "results.sqlite") as store:
                overall = summarise(store, int(event.run_id or 0)).rows[-1]
            progress.console.print(
                f"cell {event.cell.index + 1}/{counts['total']} ({event.cell.label}): "
                f"run {event.run_id} {event.status}, mean {_ms(overall.mean_s)} ms, "
                f"p95 {_ms(overall.p95_s)} ms",
                highlight=False,
            )
            progress.advance(bar[0])

    try:
        with progress:
            result = run_sweep(spec, workspace=folder, on_event=on_event)
    except KeyboardInterrupt:
        errors.print(
            f"[bold red]interrupted:[/] {counts['done']} of {counts['total']} cells "
            "done; run the same command again to run the rest",
            highlight=False,
        )
        sys.exit(130)
    console.print(
        f"sweep {spec.name}: {len(result.cells)} cells, {result.skipped} were done "
        f"before, {len(result.incomplete)} incomplete; "
        f"report: splitlab report --sweep {spec.name}"
    )
    if result.incomplete:
        sys.exit(5)


@main.command()
@click.argument("run_ids", type=int, nargs=-1)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default="csv",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The folder to write one file per table to.",
)
@_workspace_option
def export(
    *, run_ids: tuple[int, ...], fmt: Any, out: Path, workspace: Path | None
) -> None:
    """Write RUN_IDS (every run when omitted) as tables: runs, nodes,
    stage_profiles, cuts, predictions, tasks, slices, samples, energy."""
    from splitlab.export import export_runs

    with ResultStore(_existing_store(workspace)) as store:
        chosen = list(run_ids) or [record.run_id for record in store.runs()]
        written = export_runs(store, chosen, out, fmt=fmt)
    console.print(f"wrote {len(written)} files for {len(chosen)} runs to {out}")


@main.command()
@click.argument("run_id", type=int)
@_workspace_option
def rerun(run_id: int, workspace: Path | None) -> None:
    """Run RUN_ID's stored scenario again with its seed, and compare."""
    from splitlab.experiment import environment
    from splitlab.sweep import environment_changes
    from splitlab.sweep import rerun as rerun_run

    path = _existing_store(workspace)
    with ResultStore(path) as store:
        before = store.run(run_id)
    for key, (old, new) in environment_changes(
        before.environment, environment()
    ).items():
        console.print(f"[yellow]note:[/] {key} was {old}, is now {new}")
    console.print(f"running run {run_id}'s scenario {before.name} (seed {before.seed})")
    new_id = rerun_run(path.parent, run_id)
    with ResultStore(path) as store:
        old_row = summarise(store, run_id).rows[-1]
        summary = summarise(store, new_id)
    _print_summary(summary)
    new_row = summary.rows[-1]
    console.print(
        f"run {new_id} repeats run {run_id}: mean {_ms(new_row.mean_s)} ms "
        f"(was {_ms(old_row.mean_s)}), p95 {_ms(new_row.p95_s)} ms "
        f"(was {_ms(old_row.p95_s)})"
    )
    if summary.run.status != "completed":
        sys.exit(5)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    envvar="SPLITLAB_UI_TOKEN",
    default=None,
    help="Bearer token for a non-loopback address (default: $SPLITLAB_UI_TOKEN, "
    "else a new random one).",
)
@_workspace_option
def ui(host: str, port: int, token: str | None, workspace: Path | None) -> None:
    """Serve the web GUI and its HTTP API (the partitioning manager)."""
    import socket

    import uvicorn

    from splitlab.api import access_token, create_app

    folder = workspace or default_workspace()
    token = access_token(host, token)

    # Bind and listen first, so the printed address answers from now on
    # (port 0 picks a free port).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        raise ConfigError(
            f"--host/--port: cannot bind {host}:{port}: {error}"
        ) from None
    listener.listen(128)
    bound_port = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/"
    if token:
        url += f"#token={token}"
    console.print(f"splitlab ui: {url}", highlight=False, soft_wrap=True)
    console.print(f"workspace: {folder.resolve()}", highlight=False)
    if token:
        console.print(
            "every API call needs 'Authorization: Bearer TOKEN' (the page takes "
            "the token from the address above)",
            highlight=False,
        )
    app = create_app(folder, token=token)
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[listener])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Say what this machine offers the testbed, and what each backend uses.

    Kernel features are tried in a scratch network namespace and cgroup that
    are removed after.  Exits 0 even when something is missing.
    """
    from splitlab.doctor import examine

    report = examine()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    table = Table("probe", "", "detail", box=box.SIMPLE_HEAD)
    for probe in report.probes:
        mark = "[green]yes[/]" if probe.ok else "[red]no[/]"
        table.add_row(probe.name, mark, probe.detail)
    console.print(table)
    for plan in report.backends:
        state = "usable" if plan.usable else "[red]not usable[/]"
        console.print(f"[bold]{plan.backend}[/] ({state}): {'; '.join(plan.uses)}")


@main.command()
@click.option("--force", is_flag=True, help="Measure again even when cached.")
def calibrate(force: bool) -> None:
    """Measure this machine's single-core speed and print each device class's
    CPU share (cached per CPU model and torch version)."""
    from splitlab.calibration import CLASSES, cache_file
    from splitlab.calibration import calibrate as measure

    result = measure(force=force)
    console.print(
        f"this machine: {result.gflops:.1f} GFLOP/s fp32 on one thread "
        f"({result.cpu_model}, torch {result.torch_version}, spread "
        f"{result.spread:.0%} over {result.repeats} repeats); cache "
        f"{cache_file()}",
        highlight=False,
    )
    table = Table("class", "board", "CPU", "reference GFLOP/s", "CPU share",
                  "memory MB", box=box.SIMPLE_HEAD)  # fmt: skip
    for spec in CLASSES.values():
        share = result.share(spec.name)
        table.add_row(spec.name, spec.title, spec.cpu, f"{spec.reference_gflops:g}",
                      f"{share:.3f}", str(spec.memory_mb))  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
