"""The base station: collects profiles, plans, and serves offloaded tails.

The station is its own process.  It waits for every device of the scenario
to connect and authenticate, profiles the model on itself while the devices
profile on themselves, computes the scheme with the scenario's algorithm,
sends each device its cut and its tasks, and then completes every offloaded
task's remaining stages on its worker threads in the order the scheduler
chooses.  Each finished task is committed to the results store at once.  At
the end every task's output is checked against the unsplit model.

Started by the testbed as ``python -m splitlab.station``, it reads one JSON
line on standard input (see :class:`StationConfig`) and reports progress as
JSON lines on standard output, one event per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from splitlab.codec import decode
from splitlab.data import Samples, load_inputs
from splitlab.errors import ProtocolError, SplitlabError, TestbedError
from splitlab.lifetime import die_with_parent
from splitlab.models import StagedModel
from splitlab.plan import FixedScheme, Plan, PlanningProblem, make_plan
from splitlab.profile import NodeProfile, profile_from_dict, profile_model
from splitlab.replan import Drift, DriftWatch, rescaled_link, rescaled_profile
from splitlab.results import (
    PredictionRecord,
    ResultStore,
    RunStatus,
    SliceRecord,
    TaskRecord,
)
from splitlab.scenario import Scenario, parse_scenario
from splitlab.schedule import Job, Scheduler, make_scheduler
from splitlab.verification import verify_run
from splitlab.weights import load_trained
from splitlab.wire import (
    DONE_KEY,
    Channel,
    ConnectionClosed,
    Message,
    MessageKind,
    decode_tensor,
)
from splitlab.workload import TaskSpec

logger = logging.getLogger(__name__)

Emit = Callable[..., None]

CONNECT_TIMEOUT_S = 120.0
PROFILE_TIMEOUT_S = 600.0
START_DELAY_S = 0.5
# A run is given this much longer than the plan predicts before the devices
# that have not finished are declared hung.
RUN_SLACK_FACTOR = 3.0
RUN_SLACK_S = 60.0
# A device silent for longer than max(MIN_SILENCE_S, SILENCE_PERIODS arrival
# periods + SILENCE_FACTOR x the longest predicted delay) is declared hung.
MIN_SILENCE_S = 10.0
SILENCE_PERIODS = 10
SILENCE_FACTOR = 3.0
# A device whose connection dropped has this long to reconnect (its agent
# gives up after 10 s of backoff).
RECONNECT_GRACE_S = 12.0


def connect_timeout_s() -> float:
    """How long the station waits for every device: ``$SPLITLAB_CONNECT_TIMEOUT_S``.

    Defaults to :data:`CONNECT_TIMEOUT_S`; boards that boot slowly need more.
    """
    return float(os.environ.get("SPLITLAB_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))


@dataclass(frozen=True, slots=True)
class StationConfig:
    """What the testbed tells the station when it starts it."""

    run_id: int
    store: Path
    scenario_yaml: str
    weights: Path
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 0
    resume: bool = False
    # Whether the devices emulate their links in the transport (the local
    # backend); where the kernel shapes the links, they send unshaped.
    emulate_links: bool = True

    @classmethod
    def from_json(cls, line: str) -> StationConfig:
        """Parse the start-up line."""
        data = json.loads(line)
        try:
            return cls(
                run_id=int(data["run_id"]),
                store=Path(data["store"]),
                scenario_yaml=str(data["scenario_yaml"]),
                weights=Path(data["weights"]),
                secret=bytes.fromhex(data["secret"]),
                host=str(data.get("host", "127.0.0.1")),
                port=int(data.get("port", 0)),
                resume=bool(data.get("resume", False)),
                emulate_links=bool(data.get("emulate_links", True)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"bad station configuration: {error!r}") from None

    def to_json(self) -> str:
        """The start-up line :meth:`from_json` reads."""
        return json.dumps(
            {
                "run_id": self.run_id,
                "store": str(self.store),
                "scenario_yaml": self.scenario_yaml,
                "weights": str(self.weights),
                "secret": self.secret.hex(),
                "host": self.host,
                "port": self.port,
                "resume": self.resume,
                "emulate_links": self.emulate_links,
            }
        )


@dataclass(slots=True)
class _Device:
    """The station's view of one connected device (mutated under the lock)."""

    name: str
    channel: Channel
    expected: int = 0
    recorded: int = 0
    sent_all: bool = False
    failure: str | None = None
    last_heard_at: float = 0.0
    disconnected_at: float | None = None
    seen: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Offloaded:
    """An offloaded task in flight at the station (mutated by one worker)."""

    spec: TaskSpec
    cut: int
    tensor: torch.Tensor
    arrival_at: float
    started_at: float
    finished_at: float
    received_at: float
    cut_bytes: int
    compute_s: float = 0.0
    slices: list[SliceRecord] = field(default_factory=list)


class BaseStation:
    """One run's base station.

    Parameters
    ----------
    config:
        The run, its store and secret.
    emit:
        Called as ``emit(kind, **fields)`` for every progress event.
    """

    def __init__(self, config: StationConfig, emit: Emit) -> None:
        self.config = config
        self._emit = emit
        self.scenario: Scenario = parse_scenario(
            yaml.safe_load(config.scenario_yaml), source="run scenario"
        )
        self.store = ResultStore(config.store)
        self._store_lock = threading.Lock()
        self._lock = threading.Condition()
        self._devices: dict[str, _Device] = {}
        self._inflight: dict[int, _Offloaded] = {}
        self._busy_workers = 0
        self._stopping = False
        self._start_at = 0.0
        self._tasks: dict[int, TaskSpec] = {}
        self._plan: Plan | None = None
        self._scheduler: Scheduler = make_scheduler(self.scenario.scheduler)
        self.model: StagedModel | None = None
        self.data: Samples | None = None
        self._bs_stage_s: tuple[float, ...] = ()
        self._priorities = {d.name: d.priority for d in self.scenario.devices}
        # What the current scheme assumes, per device; re-planning rescales it.
        self._profiles: dict[str, NodeProfile] = {}
        self._links = {d.name: d.link.spec() for d in self.scenario.devices}
        self._cuts: dict[str, int] = {}
        self._used_cuts: dict[str, set[int]] = {}
        self._bs_profile: NodeProfile | None = None
        self._replan_lock = threading.Lock()
        replan = self.scenario.replan
        self._watch = (
            None
            if replan is None
            else DriftWatch(threshold=replan.threshold, window=replan.window)
        )

    # Events ----------------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> None:
        """Report an event to the testbed and keep it in the run's log."""
        self._emit(kind, **fields)
        with self._store_lock:
            self.store.record_event(
                self.config.run_id,
                str(fields.get("node", self.scenario.base_station.name)),
                kind,
                json.dumps(fields, sort_keys=True),
            )

    # The run ---------------------------------------------------------------

    def serve(self) -> tuple[str, str | None]:
        """Run the whole experiment; return the run's status and reason."""
        torch.set_num_threads(self.scenario.base_station.threads)
        listener = socket.create_server((self.config.host, self.config.port))
        closing = threading.Event()
        try:
            self.emit("listening", port=listener.getsockname()[1])
            self._accept_devices(listener)

            # The port stays open for the whole run: a device whose link
            # dropped comes back here, and anyone else is logged and refused.
            guard = threading.Thread(
                target=self._watch_port,
                args=(listener, closing),
                name="bs-guard",
                daemon=True,
            )
            guard.start()
            profiles, bs_profile = self._profile()
            plan = self._make_plan(profiles, bs_profile)
            assert self.model is not None
            for cut in sorted(set(plan.cuts.values())):
                self.model.prepare(cut, self.model.num_stages)
            self._execute(plan)
        finally:
            closing.set()
            listener.close()
        self._verify()

        failures = [
            f"{device.name}: {device.failure}"
            for device in self._devices.values()
            if device.failure
        ]
        status: RunStatus = "incomplete" if failures else "completed"
        reason = "; ".join(failures) or None
        with self._store_lock:
            self.store.finish_run(self.config.run_id, status, reason)
        self.emit("finished", status=status, reason=reason)
        return status, reason

    def close(self) -> None:
        """Close every connection and the store."""
        for device in self._devices.values():
            device.channel.close()
        self.store.close()

    def _accept_devices(self, listener: socket.socket) -> None:
        expected = {device.name for device in self.scenario.devices}
        timeout_s = connect_timeout_s()
        deadline = time.monotonic() + timeout_s
        while set(self._devices) != expected:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                missing = ", ".join(sorted(expected - set(self._devices)))
                raise TestbedError(
                    f"devices {missing} did not connect within {timeout_s:g} s"
                )
            listener.settimeout(remaining_s)
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            admitted = self._admit(sock, address)
            if admitted is None:
                continue
            channel, hello = admitted
            node = channel.node
            if node not in expected or node in self._devices:
                self._refuse(channel, address, f"{node} is unknown or already here")
                continue
            self._devices[node] = _Device(node, channel)
            config = next(d for d in self.scenario.devices if d.name == node)
            self.emit(
                "connected",
                node=node,
                pid=hello.header.get("pid"),
                rss_bytes=hello.header.get("rss_bytes"),
                cpu_share=hello.header.get("cpu_share"),
                memory_bytes=hello.header.get("memory_bytes"),
                link=config.link.model_dump(),
            )

    def _admit(
        self, sock: socket.socket, address: object
    ) -> tuple[Channel, Message] | None:
        """Authenticate a new connection and read its HELLO; None if refused."""
        try:
            try:
                channel = Channel.accept(
                    sock, secret=self.config.secret, timeout_s=10.0
                )
            except ConnectionClosed as error:
                # A peer that hangs up before authenticating asks for nothing:
                # the monitor's RTT probe times a TCP connect this way.
                logger.debug("%s hung up before authenticating: %s", address, error)
                return None
            hello = channel.recv(timeout_s=10.0)
        except (ProtocolError, TimeoutError, OSError) as error:
            logger.warning("refused a connection from %s: %s", address, error)
            self.emit("refused", address=str(address), reason=str(error))
            sock.close()
            return None
        if hello.kind != MessageKind.HELLO:
            self._refuse(channel, address, f"it sent {hello.kind.name} first")
            return None
        return channel, hello

    def _refuse(self, channel: Channel, address: object, reason: str) -> None:
        logger.warning("refused %s: %s", address, reason)
        self.emit("refused", address=str(address), reason=reason)
        channel.close()

    def _watch_port(self, listener: socket.socket, closing: threading.Event) -> None:
        listener.settimeout(0.5)
        while not closing.is_set():
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            admitted = self._admit(sock, address)
            if admitted is None:
                continue
            channel, hello = admitted
            device = self._devices.get(channel.node)
            if device is not None and hello.header.get("resume") is True:
                self._reattach(device, channel)
            else:
                self._refuse(
                    channel, address, f"{channel.node} connected after the start"
                )

    def _profile(self) -> tuple[dict[str, NodeProfile], NodeProfile]:
        scenario = self.scenario
        data_dir = scenario.data.dir
        for config in scenario.devices:
            link = config.link.spec()
            self._devices[config.name].channel.send(
                MessageKind.PROFILE,
                {
                    "model": scenario.model,
                    "weights": str(self.config.weights),
                    "dataset": scenario.data.dataset,
                    "data_dir": None if data_dir is None else str(data_dir),
                    "test_fraction": scenario.training.test_fraction,
                    "seed": scenario.seed,
                    "sample": 0,
                    "warmup": scenario.profiling.warmup,
                    "repeats": scenario.profiling.repeats,
                    "codec": scenario.device_codec(config.name),
                    "link": {
                        "latency_s": link.latency_s,
                        "rate_bps": link.rate_bps,
                        "jitter_s": link.jitter_s,
                        "emulate": self.config.emulate_links,
                    },
                },
            )

        # The station profiles itself while the devices do the same.
        self.data = load_inputs(
            scenario.data.dataset,
            data_dir=data_dir,
            test_fraction=scenario.training.test_fraction,
            seed=scenario.seed,
        )
        self.model = load_trained(
            scenario.model, self.config.weights, classes=len(self.data.classes)
        )
        bs_name = scenario.base_station.name
        bs_profile = profile_model(
            self.model,
            torch.from_numpy(self.data.sample(0)),
            node=bs_name,
            warmup=scenario.profiling.warmup,
            repeats=scenario.profiling.repeats,
            # Every codec of the run, so the store shows them side by side.
            codecs=[scenario.device_codec(d.name) for d in scenario.devices],
        )
        self._bs_stage_s = tuple(stage.median_s for stage in bs_profile.stages)
        with self._store_lock:
            self.store.record_profile(self.config.run_id, bs_profile)
        self.emit("profiled", node=bs_name, total_s=bs_profile.tail_s(0))

        profiles = {}
        for name, device in self._devices.items():
            reply = device.channel.recv(timeout_s=PROFILE_TIMEOUT_S)
            if reply.kind != MessageKind.PROFILE:
                raise ProtocolError(f"device {name} answered {reply.kind.name}")
            profile = profile_from_dict(reply.header)
            if profile.node != name or profile.num_stages != bs_profile.num_stages:
                raise ProtocolError(
                    f"device {name} sent a profile of {profile.num_stages} stages "
                    f"for node {profile.node}; expected {bs_profile.num_stages}"
                )
            if profile.codec != scenario.device_codec(name):
                raise ProtocolError(
                    f"device {name} profiled codec {profile.codec}, expected "
                    f"{scenario.device_codec(name)}"
                )
            profiles[name] = profile
            with self._store_lock:
                self.store.record_profile(self.config.run_id, profile)
            self.emit(
                "profiled",
                node=name,
                total_s=profile.head_s(profile.num_stages),
                rss_bytes=reply.header.get("rss_bytes"),
            )
        return profiles, bs_profile

    def _make_plan(
        self, profiles: dict[str, NodeProfile], bs_profile: NodeProfile
    ) -> Plan:
        scenario = self.scenario
        assert self.data is not None
        self._profiles = dict(profiles)
        tasks = scenario.tasks(num_samples=len(self.data.labels))
        if self.config.resume:
            tasks = self._remaining(tasks)
        self._tasks = {task.task_id: task for task in tasks}
        problem = PlanningProblem(
            device_profiles=profiles,
            bs_profile=bs_profile,
            links={device.name: device.link.spec() for device in scenario.devices},
            tasks=tasks,
            scheduler=scenario.scheduler,
            objective=scenario.objective,
            workers=scenario.base_station.workers,
            device_memory_bytes={
                device.name: device.memory_bytes for device in scenario.devices
            },
            priorities={device.name: device.priority for device in scenario.devices},
        )
        if self.config.resume:
            # A resumed run keeps the scheme and the predictions it started
            # with; only its remaining tasks run.
            with self._store_lock:
                cuts = self.store.cuts(self.config.run_id)
            plan = make_plan(FixedScheme(cuts, name="resumed"), problem)
            self._announce(plan, bs_profile)
            return plan
        plan = make_plan(scenario.algorithm, problem)
        predictions = [
            PredictionRecord(
                task_id=p.task_id,
                device=p.device,
                idx=p.index,
                cut=p.cut,
                arrival_s=p.arrival_s,
                device_wait_s=p.device_wait_s,
                device_s=p.device_s,
                transmission_s=p.transmission_s,
                bs_wait_s=p.bs_wait_s,
                bs_s=p.bs_s,
                delay_s=p.delay_s,
            )
            for p in plan.predictions
        ]
        with self._store_lock:
            self.store.record_plan(self.config.run_id, plan.cuts, predictions)
        self._announce(plan, bs_profile)
        return plan

    def _announce(self, plan: Plan, bs_profile: NodeProfile) -> None:
        self._plan = plan
        self._bs_profile = bs_profile
        self._cuts = dict(plan.cuts)
        self._used_cuts = {device: {cut} for device, cut in plan.cuts.items()}
        self.emit(
            "plan",
            algorithm=plan.algorithm,
            cuts=dict(plan.cuts),
            predicted_mean_s=plan.mean_delay_s,
            stage_names=[stage.name for stage in bs_profile.stages],
        )

    def _remaining(self, tasks: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
        """The tasks a resumed run still owes, moved to start at once."""
        with self._store_lock:
            done = {task.task_id for task in self.store.tasks(self.config.run_id)}
        remaining = [task for task in tasks if task.task_id not in done]
        if not remaining:
            return ()
        offset_s = min(task.arrival_s for task in remaining)
        return tuple(
            replace(
                task,
                arrival_s=task.arrival_s - offset_s,
                deadline_s=None
                if task.deadline_s is None
                else task.deadline_s - offset_s,
            )
            for task in remaining
        )

    def _execute(self, plan: Plan) -> None:
        for device in self._devices.values():
            device.expected = sum(
                1 for task in self._tasks.values() if task.device == device.name
            )
        workers = [
            threading.Thread(
                target=self._work, args=(index,), name=f"bs-worker-{index}", daemon=True
            )
            for index in range(self.scenario.base_station.workers)
        ]
        for worker in workers:
            worker.start()

        # Every device starts its clock at the same instant.
        self._start_at = time.time() + START_DELAY_S
        readers = []
        for name, device in self._devices.items():
            own = [
                [task.task_id, task.sample, task.arrival_s]
                for task in self._tasks.values()
                if task.device == name
            ]
            device.channel.send(
                MessageKind.PLAN,
                {"cut": plan.cuts[name], "start_at": self._start_at, "tasks": own},
            )
            reader = threading.Thread(
                target=self._read,
                args=(device, device.channel),
                name=f"bs-read-{name}",
                daemon=True,
            )
            reader.start()
            readers.append(reader)
        self.emit("started", start_at=self._start_at, tasks=len(self._tasks))

        predicted_end_s = max((p.end_s for p in plan.predictions), default=0.0)
        deadline = (
            time.time()
            + START_DELAY_S
            + (predicted_end_s * RUN_SLACK_FACTOR + RUN_SLACK_S)
        )
        # A device that sends nothing for this long while it still owes tasks
        # is declared hung; its finished tasks stay recorded.
        longest_s = max((p.delay_s for p in plan.predictions), default=0.0)
        silence_s = max(
            MIN_SILENCE_S,
            SILENCE_PERIODS * self.scenario.workload.period_ms / 1e3
            + SILENCE_FACTOR * longest_s,
        )
        for device in self._devices.values():
            device.last_heard_at = self._start_at
        with self._lock:
            while not self._settled():
                now = time.time()
                for device in self._devices.values():
                    if device.failure is not None:
                        continue
                    away_at = device.disconnected_at
                    if away_at is not None and now - away_at > RECONNECT_GRACE_S:
                        device.failure = (
                            f"disconnected after {device.recorded} of "
                            f"{device.expected} tasks"
                        )
                        self.emit("device_failed", node=device.name,
                                  reason=device.failure)  # fmt: skip
                        continue
                    if device.sent_all or away_at is not None:
                        continue
                    if now > deadline or now - device.last_heard_at > silence_s:
                        device.failure = (
                            f"hung: silent for {now - device.last_heard_at:.1f} s "
                            f"after {device.recorded} of {device.expected} tasks"
                        )
                        self.emit("device_failed", node=device.name,
                                  reason=device.failure)  # fmt: skip
                if now > deadline:
                    break
                self._lock.wait(timeout=0.5)
            for device in self._devices.values():
                if device.failure is None and device.recorded < device.expected:
                    device.failure = (
                        f"only {device.recorded} of {device.expected} tasks "
                        f"finished by the run's deadline"
                    )
            self._stopping = True
            self._lock.notify_all()
        for device in self._devices.values():
            if device.failure is None:
                with contextlib.suppress(OSError):
                    device.channel.send(MessageKind.BYE, {})
        for worker in workers:
            worker.join(timeout=30.0)

    def _settled(self) -> bool:
        if self._busy_workers or len(self._scheduler):
            return False
        return all(
            device.failure is not None
            or (device.sent_all and device.recorded >= device.expected)
            for device in self._devices.values()
        )

    def _fail(self, device: _Device, reason: str) -> None:
        with self._lock:
            if device.failure is None and not (
                device.sent_all and device.recorded >= device.expected
            ):
                device.failure = (
                    f"{reason} after {device.recorded} of {device.expected} tasks"
                )
                self._lock.notify_all()
            else:
                return
        self.emit("device_failed", node=device.name, reason=device.failure)

    def _read(self, device: _Device, channel: Channel) -> None:
        while True:
            try:
                message = channel.recv(timeout_s=None)
            except (ProtocolError, OSError, TimeoutError) as error:
                self._lost(device, channel, error)
                return
            try:
                self._handle(device, channel, message)
            except (ProtocolError, KeyError, TypeError, ValueError) as error:
                self._fail(device, f"sent a malformed {message.kind.name} ({error})")
                channel.close()
                return

    def _lost(self, device: _Device, channel: Channel, error: Exception) -> None:
        """A device's connection dropped: give it time to reconnect."""
        with self._lock:
            if self._stopping or device.channel is not channel or device.failure:
                return
            device.disconnected_at = time.time()
        self.emit("disconnected", node=device.name, reason=str(error))

    def _reattach(self, device: _Device, channel: Channel) -> None:
        """Continue a device's run on its new connection."""
        with self._lock:
            if self._stopping or device.failure is not None:
                refused = True
            else:
                refused = False
                old, device.channel = device.channel, channel
                device.disconnected_at = None
        if refused:
            self._refuse(channel, channel.node, "the run is over for it")
            return
        old.close()
        threading.Thread(
            target=self._read,
            args=(device, channel),
            name=f"bs-read-{device.name}",
            daemon=True,
        ).start()
        self.emit("reconnected", node=device.name)

    def _handle(self, device: _Device, channel: Channel, message: Message) -> None:
        received_at = time.time()
        device.last_heard_at = received_at
        if message.kind == MessageKind.DONE:
            with self._lock:
                device.sent_all = True
                self._lock.notify_all()
            channel.send(MessageKind.ACK, {"key": DONE_KEY})
            return
        if message.kind not in (MessageKind.TENSOR, MessageKind.RESULT):
            raise ProtocolError(f"unexpected {message.kind.name}")

        # A device resends what was not acknowledged before a dropped
        # connection; a copy of a task the station has is only acknowledged.
        task_id = int(message.header["task_id"])
        if task_id not in device.seen:
            self._accept_task(device, message, received_at)
            device.seen.add(task_id)
        channel.send(MessageKind.ACK, {"key": task_id})

    def _accept_task(
        self, device: _Device, message: Message, received_at: float
    ) -> None:
        header = message.header
        task = self._tasks[int(header["task_id"])]
        assert self._plan is not None and self.model is not None
        cut = int(header["cut"])
        if task.device != device.name or cut not in self._used_cuts[device.name]:
            raise ProtocolError(
                f"task {task.task_id} with cut {cut} does not belong to "
                f"{device.name} at cuts {sorted(self._used_cuts[device.name])}"
            )
        arrival_at = float(header["arrival_at"])
        started_at = float(header["started_at"])
        finished_at = float(header["finished_at"])

        if message.kind == MessageKind.RESULT:
            # The whole model ran on the device: nothing crossed the link.
            array = decode_tensor(header["tensor"], message.payload)
            self._record(
                device,
                task,
                cut=cut,
                arrival_at=arrival_at,
                started_at=started_at,
                finished_at=finished_at,
                received_at=finished_at,
                end_at=finished_at,
                compute_s=0.0,
                cut_bytes=0,
                logits=np.asarray(array, dtype=np.float32).reshape(-1),
            )
            return

        # The cut tensor came in the device's codec; what crossed the link
        # is the encoded payload.
        offloaded = _Offloaded(
            spec=task,
            cut=cut,
            tensor=torch.from_numpy(decode(header["tensor"], message.payload)),
            arrival_at=arrival_at,
            started_at=started_at,
            finished_at=finished_at,
            received_at=received_at,
            cut_bytes=len(message.payload),
        )
        with self._lock:
            self._inflight[task.task_id] = offloaded
            self._scheduler.push(
                Job(
                    task_id=task.task_id,
                    device=device.name,
                    release_s=received_at - self._start_at,
                    # The scheduler ranks jobs by the BS profile's estimate.
                    stage_s=self._bs_stage_s[cut:],
                    deadline_s=task.deadline_s,
                    priority=self._priorities[device.name],
                )
            )
            self._lock.notify_all()

    def _work(self, worker: int) -> None:
        assert self.model is not None
        model = self.model
        while True:
            with self._lock:
                piece = self._scheduler.pop()
                while piece is None:
                    if self._stopping:
                        return
                    self._lock.wait(timeout=0.5)
                    piece = self._scheduler.pop()
                self._busy_workers += 1
                task = self._inflight[piece.job.task_id]

            first = task.cut + piece.job.done
            started = time.time()
            with torch.inference_mode():
                task.tensor = model.run(task.tensor, first, first + piece.stages)
            ended = time.time()
            task.compute_s += ended - started
            task.slices.append(
                SliceRecord(
                    task_id=task.spec.task_id,
                    device=task.spec.device,
                    worker=worker,
                    first_stage=first,
                    stages=piece.stages,
                    start_s=started - self._start_at,
                    end_s=ended - self._start_at,
                )
            )

            with self._lock:
                self._busy_workers -= 1
                remaining = self._scheduler.finish(piece)
                if remaining is None:
                    del self._inflight[task.spec.task_id]
                self._lock.notify_all()
            if remaining is None:
                self._record(
                    self._devices[task.spec.device],
                    task.spec,
                    cut=task.cut,
                    arrival_at=task.arrival_at,
                    started_at=task.started_at,
                    finished_at=task.finished_at,
                    received_at=task.received_at,
                    end_at=ended,
                    compute_s=task.compute_s,
                    cut_bytes=task.cut_bytes,
                    slices=task.slices,
                    logits=task.tensor.numpy().reshape(-1),
                )

    def _record(
        self,
        device: _Device,
        task: TaskSpec,
        *,
        cut: int,
        arrival_at: float,
        started_at: float,
        finished_at: float,
        received_at: float,
        end_at: float,
        compute_s: float,
        cut_bytes: int,
        logits: np.ndarray[Any, Any],
        slices: Sequence[SliceRecord] = (),
    ) -> None:
        assert self.data is not None
        record = TaskRecord(
            task_id=task.task_id,
            device=task.device,
            idx=task.index,
            sample=task.sample,
            label=int(self.data.labels[task.sample]),
            cut=cut,
            arrival_s=arrival_at - self._start_at,
            device_wait_s=started_at - arrival_at,
            device_s=finished_at - started_at,
            transmission_s=received_at - finished_at,
            bs_wait_s=(end_at - received_at) - compute_s,
            bs_s=compute_s,
            delay_s=end_at - arrival_at,
            cut_bytes=cut_bytes,
            prediction=int(np.argmax(logits)),
            logits=logits.astype(np.float32).tobytes(),
            completed_at=end_at,
        )
        with self._store_lock:
            self.store.record_task(self.config.run_id, record, slices)
        with self._lock:
            device.recorded += 1
            done = device.recorded
            self._lock.notify_all()
        self.emit(
            "task",
            node=device.name,
            done=done,
            expected=device.expected,
            delay_s=record.delay_s,
        )
        if self._watch is not None:
            self._watch_task(record)

    def _watch_task(self, record: TaskRecord) -> None:
        """Compare a finished task with the plan; re-plan on a lasting drift."""
        assert self._watch is not None and self._bs_profile is not None
        device = record.device
        drifts = []
        head_s = self._profiles[device].head_s(record.cut)
        if record.cut > 0 and head_s > 0:
            drifts.append(
                self._watch.observe(device, "device compute", record.device_s / head_s)
            )
        if record.cut < self._bs_profile.num_stages:
            modelled_s = self._links[device].transfer_s(record.cut_bytes)
            drifts.append(
                self._watch.observe(
                    device, "link transfer", record.transmission_s / modelled_s
                )
            )
        for drift in drifts:
            if drift is not None:
                self._replan(drift)

    def _replan(self, drift: Drift) -> None:
        """Rescale what drifted and plan the tasks not yet generated anew."""
        assert self._bs_profile is not None
        with self._replan_lock:
            device = drift.device
            if drift.quantity == "device compute":
                self._profiles[device] = rescaled_profile(
                    self._profiles[device], drift.ratio
                )
            else:
                self._links[device] = rescaled_link(self._links[device], drift.ratio)
            now_s = time.time() - self._start_at
            remaining = tuple(
                task for task in self._tasks.values() if task.arrival_s > now_s
            )
            if not remaining:
                return
            scenario = self.scenario
            problem = PlanningProblem(
                device_profiles=self._profiles,
                bs_profile=self._bs_profile,
                links=self._links,
                tasks=remaining,
                scheduler=scenario.scheduler,
                objective=scenario.objective,
                workers=scenario.base_station.workers,
                device_memory_bytes={d.name: d.memory_bytes for d in scenario.devices},
                priorities=self._priorities,
            )
            plan = make_plan(scenario.algorithm, problem)
            before = dict(self._cuts)
            for name, cut in plan.cuts.items():
                if cut != before[name]:
                    self._used_cuts[name].add(cut)
                    self._cuts[name] = cut
                    with contextlib.suppress(OSError, ProtocolError):
                        self._devices[name].channel.send(
                            MessageKind.PLAN, {"recut": cut}
                        )
        self.emit(
            "replan",
            cause=drift.describe(),
            before=before,
            after=dict(plan.cuts),
            tasks=len(remaining),
            predicted_mean_s=plan.mean_delay_s,
        )

    def _verify(self) -> None:
        assert self.model is not None and self.data is not None
        with self._store_lock:
            outcome = verify_run(
                self.store,
                self.config.run_id,
                model=self.model,
                data=self.data,
                codecs={
                    d.name: self.scenario.device_codec(d.name)
                    for d in self.scenario.devices
                },
            )
        self.emit(
            "verified",
            matched=outcome.matched,
            total=outcome.total,
            accuracy=outcome.accuracy,
            max_abs_diff=outcome.max_abs_diff,
            min_cosine=outcome.min_cosine,
            codecs=[
                {
                    "codec": check.codec,
                    "tasks": check.tasks,
                    "agreement": check.agreement,
                    "accuracy_change": check.accuracy_change,
                    "max_abs_change": check.max_abs_change,
                }
                for check in outcome.codec_checks
            ],
        )


def _print_event(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": kind, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Entry point of ``python -m splitlab.station``."""
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("SPLITLAB_LOG", "WARNING"),
        format="%(asctime)s station %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = StationConfig.from_json(sys.stdin.readline())
    except ValueError as error:
        logger.error("%s", error)
        return 3
    station = BaseStation(config, _print_event)
    try:
        status, _ = station.serve()
    except SplitlabError as error:
        station.store.finish_run(config.run_id, "incomplete", str(error))
        _print_event("finished", status="incomplete", reason=str(error))
        return error.exit_code
    finally:
        station.close()
    return 0 if status == "completed" else 5


if __name__ == "__main__":
    sys.exit(main())
