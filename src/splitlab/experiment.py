"""Running a scenario end to end: the Python API the CLI calls.

:func:`run_scenario` trains or loads the model's weights, opens the results
store, starts the base station and the devices on the testbed, relays the
station's progress events, and makes sure the run's row ends ``completed`` or
``incomplete`` with a reason, whatever happened to the processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
import yaml

import splitlab
from splitlab import calibration
from splitlab.boards import BoardProcess, SshTestbed
from splitlab.data import load_inputs
from splitlab.errors import ConfigError, TestbedError
from splitlab.limit import Mechanism
from splitlab.measure import QUICK, TestbedCheck
from splitlab.monitor import Monitor, Target, store_sink
from splitlab.results import NodeRecord, ResultStore
from splitlab.scenario import Scenario, parse_scenario
from splitlab.station import StationConfig
from splitlab.testbed import LocalTestbed
from splitlab.verification import verify_run
from splitlab.weights import (
    TrainedWeights,
    ensure_weights,
    import_weights,
    load_trained,
)

logger = logging.getLogger(__name__)

OnEvent = Callable[[dict[str, Any]], None]
STORE_NAME = "results.sqlite"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended.

    Attributes
    ----------
    run_id:
        The run's id in the store.
    status:
        ``completed`` or ``incomplete``.
    reason:
        Why the run is incomplete, or ``None``.
    store:
        The results store file.
    weights:
        The weights the run used.
    limit_mechanism:
        How the device processes were held to their CPU shares.
    check:
        The netns testbed's links and CPU shares, configured beside measured
        before the run; ``None`` on other backends.
    """

    run_id: int
    status: str
    reason: str | None
    store: Path
    weights: TrainedWeights
    limit_mechanism: str
    check: TestbedCheck | None = None


def default_workspace() -> Path:
    """``$SPLITLAB_WORKSPACE``, else ``./workspace``."""
    return Path(os.environ.get("SPLITLAB_WORKSPACE", "workspace"))


def store_path(workspace: Path | None, *, existing: bool = False) -> Path:
    """The results store of ``workspace`` (the default one when ``None``).

    With ``existing``, a store that is not there is a :class:`ConfigError`.
    """
    path = (workspace or default_workspace()) / STORE_NAME
    if existing and not path.exists():
        raise ConfigError(f"no results store at {path}")
    return path


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every run."""
    revision = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    return {
        "splitlab": splitlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpus": os.cpu_count(),
        "revision": revision,
    }


def _run_environment(scenario: Scenario) -> dict[str, Any]:
    """:func:`environment`, plus the calibration when a device names a class."""
    facts = environment()
    if any(device.cpu_share is None for device in scenario.devices):
        facts["calibration"] = calibration.current().record()
    return facts


def prepare_weights(scenario: Scenario, *, progress: bool = False) -> TrainedWeights:
    """Load the scenario's model weights from the cache, training them if absent.

    A user model with ``weights`` in its scenario uses those instead.
    """
    if scenario.weights is not None:
        return import_weights(
            scenario.model,
            scenario.weights,
            dataset=scenario.data.dataset,
            data_dir=scenario.data.dir,
            test_fraction=scenario.training.test_fraction,
            seed=scenario.seed,
        )
    return ensure_weights(
        scenario.model,
        dataset=scenario.data.dataset,
        data_dir=scenario.data.dir,
        epochs=scenario.training.epochs,
        test_fraction=scenario.training.test_fraction,
        seed=scenario.seed,
        progress=progress,
    )


def run_scenario(
    scenario: Scenario,
    *,
    workspace: Path | None = None,
    on_event: OnEvent | None = None,
    progress: bool = False,
    limit_mechanism: Mechanism | None = None,
    on_started: Callable[[LocalTestbed | SshTestbed], None] | None = None,
    resume: int | None = None,
) -> RunOutcome:
    """Run ``scenario`` on the testbed of its backend and record it.

    Backend ``ssh`` runs the devices on real boards (:class:`SshTestbed`);
    ``netns`` runs every node in a network namespace of its own on this
    machine; ``local`` runs them as plain processes here.

    Parameters
    ----------
    scenario:
        The validated scenario.
    workspace:
        Folder of the results store; :func:`default_workspace` when omitted.
    on_event:
        Receives every progress event of the base station (a dict with an
        ``event`` key: ``connected``, ``profiled``, ``plan``, ``task``...).
    progress:
        Show a progress bar while training.
    limit_mechanism:
        Force a CPU limit mechanism instead of the best available (local
        processes only; a board uses the best it has).
    on_started:
        Called with the testbed once every process runs (for fault injection).
    resume:
        Continue this incomplete run instead of starting a new one: only its
        tasks not yet in the store run, with the scheme it had.  Use
        :func:`resumable` to get the run's own scenario.
    """
    weights = prepare_weights(scenario, progress=progress)
    path = store_path(workspace)
    store = ResultStore(path)
    if resume is None:
        run_id = store.create_run(
            name=scenario.name,
            scenario_yaml=scenario.to_yaml(),
            scenario_hash=scenario.fingerprint(),
            seed=scenario.seed,
            algorithm=scenario.algorithm,
            scheduler=scenario.scheduler,
            environment=_run_environment(scenario),
            test_accuracy=weights.test_accuracy,
        )
    else:
        run_id = resume
        store.reopen_run(run_id)
    secret = secrets.token_bytes(32)
    testbed = make_testbed(
        scenario,
        prefix=f"r{run_id}p{os.getpid()}",
        prefer=limit_mechanism,
        run_dir=run_folder(path, run_id),
    )
    reason: str | None = None
    monitor: Monitor | None = None
    check: TestbedCheck | None = None
    try:
        check = _check_testbed(store, run_id, testbed)
        events = testbed.start_station(
            StationConfig(
                run_id=run_id,
                store=path,
                scenario_yaml=scenario.to_yaml(),
                weights=weights.path,
                secret=secret,
                resume=resume is not None,
                # The kernel shapes a netns link; a board's agent emulates
                # what its own kernel cannot (see splitlab.boards).
                emulate_links=scenario.backend != "netns",
            )
        )
        first = next(events, None)
        if first is None or first.get("event") != "listening":
            raise TestbedError(f"the base station did not start (said {first!r})")
        if on_event:
            on_event(first)
        _record_nodes(
            store,
            run_id=run_id,
            scenario=scenario,
            testbed=testbed,
            secret=secret,
            port=int(first["port"]),
        )
        monitor = _start_monitor(scenario, testbed, path, run_id, int(first["port"]))
        if on_started:
            on_started(testbed)
        for event in events:
            if on_event:
                on_event(event)
        code = testbed.station_exit_code()
        if code not in (0, 5):
            reason = f"the base station exited with code {code}"
    except KeyboardInterrupt:
        reason = "interrupted"
        raise
    finally:
        if monitor is not None:
            monitor.stop()
        testbed.close()
        if store.run(run_id).status == "running":
            store.finish_run(run_id, "incomplete", reason or "the run was stopped")
        record = store.run(run_id)
        # The station verifies at its end; if it died first, the tasks it
        # recorded are verified here, so none is left unchecked.
        if reason is not None and any(
            task.matches_unsplit is None for task in store.tasks(run_id)
        ):
            _verify_here(store, run_id, scenario, weights)
        store.close()
    return RunOutcome(
        run_id=run_id,
        status=record.status,
        reason=record.reason,
        store=path,
        weights=weights,
        limit_mechanism=testbed.mechanism,
        check=check,
    )


def run_folder(store: Path, run_id: int) -> Path:
    """The folder beside the results store that holds a run's files."""
    return store.parent / "runs" / str(run_id)


def make_testbed(
    scenario: Scenario,
    *,
    prefix: str,
    prefer: Mechanism | None,
    run_dir: Path,
) -> LocalTestbed | SshTestbed:
    """The testbed of the scenario's backend (for netns, its network built)."""
    if scenario.backend == "netns":
        from splitlab.netns import NetnsTestbed

        return NetnsTestbed(scenario, prefix=prefix, prefer=prefer, run_dir=run_dir)
    if scenario.backend == "ssh":
        return SshTestbed(scenario, prefix=prefix, save_to=run_dir / "boards")
    return LocalTestbed(scenario, prefix=prefix, prefer=prefer)


def _check_testbed(
    store: ResultStore, run_id: int, testbed: LocalTestbed | SshTestbed
) -> TestbedCheck | None:
    """Measure a netns testbed's links and CPU shares; record them and its scripts."""
    from splitlab.netns import NetnsTestbed

    if not isinstance(testbed, NetnsTestbed):
        return None
    for script in testbed.scripts:
        store.record_event(run_id, "testbed", "script", str(script))
    check = testbed.check(QUICK)
    store.record_event(run_id, "testbed", "check", check.to_json())
    return check


def resumable(workspace: Path | None, run_id: int) -> Scenario:
    """The scenario of an incomplete run that can be resumed.

    Raises
    ------
    ConfigError
        If there is no such run, it is complete, or it is still running.
    """
    with ResultStore(store_path(workspace, existing=True)) as store:
        mark_abandoned(store)
        record = store.run(run_id)
        if record.status == "completed":
            raise ConfigError(f"run {run_id} is already complete")
        if record.status == "running":
            raise ConfigError(f"run {run_id} is still running")
        recorded = len(store.tasks(run_id))
    scenario = parse_scenario(
        yaml.safe_load(record.scenario_yaml), source=f"run {run_id}'s scenario"
    )
    owed = scenario.workload.tasks_per_device * len(scenario.devices)
    if recorded >= owed:
        raise ConfigError(f"run {run_id} already has all {owed} tasks recorded")
    return scenario


def _verify_here(
    store: ResultStore, run_id: int, scenario: Scenario, weights: TrainedWeights
) -> None:
    data = load_inputs(
        scenario.data.dataset,
        data_dir=scenario.data.dir,
        test_fraction=scenario.training.test_fraction,
        seed=scenario.seed,
    )
    model = load_trained(scenario.model, weights.path, classes=len(data.classes))
    codecs = {d.name: scenario.device_codec(d.name) for d in scenario.devices}
    verify_run(store, run_id, model=model, data=data, codecs=codecs)


def mark_abandoned(store: ResultStore) -> list[int]:
    """Mark runs still ``running`` whose base station process is gone.

    Returns the ids of the runs marked incomplete.
    """
    marked = []
    for record in store.runs():
        if record.status != "running":
            continue
        stations = [node for node in store.nodes(record.run_id) if node.role == "bs"]
        if any(node.pid and _alive(node.pid) for node in stations):
            continue
        store.finish_run(
            record.run_id, "incomplete", "abandoned: its processes were stopped"
        )
        marked.append(record.run_id)
    return marked


def _alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie left unreaped by its new parent is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses.
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def _start_monitor(
    scenario: Scenario,
    testbed: LocalTestbed | SshTestbed,
    path: Path,
    run_id: int,
    port: int,
) -> Monitor | None:
    """Sample every node's CPU, memory and RTT into the store, if enabled."""
    if not scenario.monitoring.enabled:
        return None
    assert testbed.station is not None
    targets = [Target(scenario.base_station.name, testbed.station.pid)]
    # A board's processes are not on this machine; only the station is
    # sampled for backend ssh.
    if not isinstance(testbed, SshTestbed):
        targets += [
            Target(name, device.process.pid, testbed.rtt_probe(name, port))
            for name, device in testbed.devices.items()
        ]
    # Its own connection, so the sampling thread never shares one.
    sink_store = ResultStore(path)
    monitor = Monitor(
        targets,
        interval_s=scenario.monitoring.interval_s,
        sink=store_sink(sink_store, run_id),
        on_stop=sink_store.close,
    )
    return monitor.start()


def _record_nodes(
    store: ResultStore,
    *,
    run_id: int,
    scenario: Scenario,
    testbed: LocalTestbed | SshTestbed,
    secret: bytes,
    port: int,
) -> None:
    assert testbed.station is not None
    store.record_node(
        run_id,
        NodeRecord(
            node=scenario.base_station.name,
            role="bs",
            pid=testbed.station.pid,
            cpu_share=None,
            memory_bytes=None,
            limit_mechanism=None,
        ),
    )
    for device in testbed.start_devices(port=port, secret=secret):
        link = device.config.link
        store.record_node(
            run_id,
            NodeRecord(
                node=device.config.name,
                role="device",
                pid=(
                    device.pid
                    if isinstance(device, BoardProcess)
                    else device.process.pid
                ),
                cpu_share=device.limit.cpu_share,
                memory_bytes=device.limit.memory_bytes,
                limit_mechanism=device.limit.mechanism,
                limit_commands=device.limit.commands,
                link={
                    "latency_ms": link.latency_ms,
                    "rate_mbps": link.rate_mbps,
                    "jitter_ms": link.jitter_ms,
                    "loss_percent": link.loss_percent,
                },
            ),
        )
