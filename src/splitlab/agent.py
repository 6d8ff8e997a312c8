"""The device agent: one end device of a run, as its own process.

The agent connects to the base station, says who it is, profiles the model
on itself when asked, then runs its tasks: each task's head (stages
``1..k``) on its own CPU, in arrival order, and hands the cut tensor to its
emulated link.  It performs only these operations; nothing it receives is
executed or unpickled.

Started by the testbed as ``python -m splitlab.agent``, it reads one JSON
line on standard input: ``{"host", "port", "node", "secret", "threads"}``,
and, on a real board, the optional files the station's paths stand for there
(``model``, ``weights``, ``data``) and how much of the link the transport
still emulates (``transport``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from splitlab.codec import DEFAULT_CODEC, encode, parse_codec
from splitlab.data import Samples, load_inputs, read_npz
from splitlab.errors import ProtocolError, SplitlabError
from splitlab.lifetime import die_with_parent
from splitlab.limit import seen_limit
from splitlab.link import LinkSpec
from splitlab.models import StagedModel
from splitlab.profile import profile_model, profile_to_dict
from splitlab.shaping import ShapedSender
from splitlab.weights import load_trained
from splitlab.wire import (
    DONE_KEY,
    Channel,
    ConnectionClosed,
    Message,
    MessageKind,
    tensor_header,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
# Between messages the agent may wait through the whole profiling and
# planning phase of the other nodes.
IDLE_TIMEOUT_S = 900.0
# Reconnecting after a dropped link: first wait, cap, and total budget.
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
RECONNECT_BUDGET_S = 10.0
# A rate no emulated link reaches: when the kernel shapes the rate, the
# transport only delays.
UNSHAPED_RATE_BPS = 1e15

Transport = Literal["all", "delay", "none"]
TRANSPORTS: tuple[Transport, ...] = ("all", "delay", "none")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the testbed tells an agent when it starts it.

    Attributes
    ----------
    host, port:
        Where the base station listens.
    node:
        This device's name.
    secret:
        The run's key for authenticating messages.
    threads:
        Torch threads for the head.
    model:
        A model reference to use instead of the station's (a user's model
        file as copied to this node), or ``None``.
    weights:
        A weights file on this node to use instead of the station's path.
    data:
        An ``.npz`` of the held-out data on this node (see
        :func:`splitlab.data.write_npz`) to use instead of the data set the
        station names.
    transport:
        What of the link the transport emulates: ``all`` (latency, rate and
        jitter), ``delay`` (latency and jitter; the kernel shapes the rate)
        or ``none`` (the kernel shapes everything).
    warm:
        The data set the station will name (``dataset``, ``data_dir``,
        ``test_fraction``, ``seed``), or ``None``.  When given, the agent
        loads it before its CPU limit is set, says ``ready`` on standard
        output and waits for ``go`` on standard input: start-up is not what
        a run measures, and at a small CPU share it would take minutes.
    """

    host: str
    port: int
    node: str
    secret: bytes
    threads: int = 1
    model: str | None = None
    weights: Path | None = None
    data: Path | None = None
    transport: Transport = "all"
    warm: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, line: str) -> AgentConfig:
        """Parse the start-up line; :class:`ValueError` names what is wrong."""
        data = json.loads(line)
        try:
            transport = data.get("transport", "all")
            if transport not in TRANSPORTS:
                raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS}")
            return cls(
                host=str(data["host"]),
                port=int(data["port"]),
                node=str(data["node"]),
                secret=bytes.fromhex(data["secret"]),
                threads=int(data.get("threads", 1)),
                model=None if data.get("model") is None else str(data["model"]),
                weights=_optional_path(data.get("weights")),
                data=_optional_path(data.get("data")),
                transport=transport,
                warm=_optional_warm(data.get("warm")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"bad agent configuration: {error!r}") from None


def _optional_warm(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"warm is a {type(value).__name__}, not an object")
    return value


def _optional_path(value: object) -> Path | None:
    return None if value is None else Path(str(value))


def resident_bytes() -> int:
    """This process's resident memory, from ``/proc/self/status``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class DeviceAgent:
    """One device's side of a run.

    Parameters
    ----------
    config:
        Where the base station is and who this device is.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.model: StagedModel | None = None
        self.inputs: Samples | None = None
        self.link: LinkSpec | None = None
        # False where the kernel shapes the link (netns, real boards): the
        # agent then sends unshaped.
        self.emulate_link = True
        self.seed = 0
        self.codec = DEFAULT_CODEC
        self.on_cut: Callable[[], None] | None = None
        self._loaded: dict[tuple[str, str | None, float, int], Samples] = {}

    def cut_link(self) -> None:
        """Drop the current connection, as a cut link would (SIGUSR1)."""
        if self.on_cut is not None:
            self.on_cut()

    def serve(self) -> int:
        """Run until the base station says goodbye; return the exit status."""
        torch.set_num_threads(self.config.threads)
        channel = self._connect(resume=False)
        try:
            while True:
                message = channel.recv(timeout_s=IDLE_TIMEOUT_S)
                if message.kind == MessageKind.BYE:
                    return 0
                if message.kind == MessageKind.PROFILE:
                    channel.send(MessageKind.PROFILE, self._profile(message))
                elif message.kind == MessageKind.PLAN:
                    return self._run_tasks(channel, message)
                else:
                    raise ProtocolError(
                        f"device {self.config.node} got an unexpected "
                        f"{message.kind.name} message"
                    )
        finally:
            channel.close()

    def _connect(self, *, resume: bool) -> Channel:
        """Connect and say HELLO; while resuming, retry with backoff."""
        delay_s = RECONNECT_FIRST_S
        deadline = time.monotonic() + RECONNECT_BUDGET_S
        while True:
            try:
                channel = Channel.connect(
                    self.config.host,
                    self.config.port,
                    secret=self.config.secret,
                    node=self.config.node,
                    timeout_s=CONNECT_TIMEOUT_S,
                )
                break
            except (OSError, ProtocolError) as error:
                if not resume or time.monotonic() + delay_s > deadline:
                    raise
                logger.warning("device %s: reconnecting in %.1f s after %s",
                               self.config.node, delay_s, error)  # fmt: skip
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)

        # The device reports the limits it finds on itself, so the run shows
        # what held rather than only what was asked for.
        limit = seen_limit()
        channel.send(
            MessageKind.HELLO,
            {
                "pid": os.getpid(),
                "rss_bytes": resident_bytes(),
                "threads": self.config.threads,
                "cpu_share": limit.cpu_share,
                "memory_bytes": limit.memory_bytes,
                "resume": resume,
            },
        )
        return channel

    def warm_up(self) -> None:
        """Load the data set named by ``config.warm`` ahead of the run."""
        warm = self.config.warm
        if warm is not None:
            self._inputs(
                str(warm["dataset"]),
                warm.get("data_dir"),
                float(warm["test_fraction"]),
                int(warm["seed"]),
            )

    def _inputs(
        self, dataset: str, data_dir: object, test_fraction: float, seed: int
    ) -> Samples:
        """The inputs of a data set, loaded once per set of parameters."""
        key = (
            dataset,
            None if data_dir is None else str(data_dir),
            test_fraction,
            seed,
        )
        if key not in self._loaded:
            self._loaded[key] = load_inputs(
                dataset,
                data_dir=None if data_dir is None else Path(str(data_dir)),
                test_fraction=test_fraction,
                seed=seed,
            )
        return self._loaded[key]

    def _profile(self, message: Message) -> dict[str, Any]:
        request = message.header
        config = self.config
        dataset: Samples
        if config.data is not None:
            dataset = read_npz(config.data)
        else:
            dataset = self._inputs(
                str(request["dataset"]),
                request.get("data_dir"),
                float(request["test_fraction"]),
                int(request["seed"]),
            )
        self.inputs = dataset
        self.model = load_trained(
            config.model or str(request["model"]),
            config.weights or Path(request["weights"]),
            classes=len(dataset.classes),
        )
        link = request["link"]
        self.link = self._transport_link(
            LinkSpec(
                latency_s=float(link["latency_s"]),
                rate_bps=float(link["rate_bps"]),
                jitter_s=float(link["jitter_s"]),
            )
        )
        self.emulate_link = bool(link.get("emulate", True))
        self.seed = int(request["seed"])
        self.codec = parse_codec(str(request.get("codec", DEFAULT_CODEC))).name
        sample = torch.from_numpy(dataset.sample(int(request["sample"])))
        profile = profile_model(
            self.model,
            sample,
            node=self.config.node,
            warmup=int(request["warmup"]),
            repeats=int(request["repeats"]),
            codec=self.codec,
        )
        reply = profile_to_dict(profile)
        reply["rss_bytes"] = resident_bytes()
        return reply

    def _transport_link(self, link: LinkSpec) -> LinkSpec | None:
        """The part of ``link`` the kernel of this node does not shape."""
        if self.config.transport == "none":
            return None
        if self.config.transport == "delay":
            return LinkSpec(link.latency_s, UNSHAPED_RATE_BPS, link.jitter_s)
        return link

    def _run_tasks(self, channel: Channel, message: Message) -> int:
        if self.model is None or self.inputs is None:
            raise ProtocolError(
                f"device {self.config.node} got a plan before profiling"
            )
        model, inputs = self.model, self.inputs
        cut = int(message.header["cut"])
        model.check_cut(cut)
        start_at = float(message.header["start_at"])
        tasks = message.header["tasks"]
        model.prepare(0, cut)
        uplink = _Uplink(self, channel)

        # One loop is the device's single CPU: a task that arrives while the
        # previous one still runs waits, as it would on the board.
        with torch.inference_mode():
            for task_id, sample, arrival_s in tasks:
                # The station may have re-planned this device's cut.
                if uplink.recut is not None and uplink.recut != cut:
                    cut = uplink.recut
                    logger.info("device %s: new cut %d", self.config.node, cut)
                    model.prepare(0, cut)
                arrival_at = start_at + float(arrival_s)
                pause_s = arrival_at - time.time()
                if pause_s > 0:
                    time.sleep(pause_s)
                started_at = time.time()
                x = torch.from_numpy(inputs.sample(int(sample)))
                output = model.run(x, 0, cut).contiguous().numpy()
                # The cut tensor crosses in the device's codec; a local
                # result is reported as it is, for verification.
                if cut == model.num_stages:
                    kind = MessageKind.RESULT
                    described, payload = tensor_header(output), output.tobytes()
                else:
                    kind = MessageKind.TENSOR
                    described, payload = encode(output, self.codec)
                finished_at = time.time()
                header = {
                    "task_id": int(task_id),
                    "cut": cut,
                    "arrival_at": arrival_at,
                    "started_at": started_at,
                    "finished_at": finished_at,
                    "tensor": described,
                }
                uplink.send(int(task_id), kind, header, payload)
        uplink.send(DONE_KEY, MessageKind.DONE, {"tasks": len(tasks)}, b"")
        return uplink.wait_for_bye()


class _Uplink:
    """The task phase's connection: survives drops by reconnecting.

    Every TENSOR, RESULT and DONE stays here until the station acknowledges
    it; after a dropped connection the agent reconnects with backoff and
    sends the unacknowledged ones again, in order.  The station ignores
    copies of what it already has.
    """

    def __init__(self, agent: DeviceAgent, channel: Channel) -> None:
        self.agent = agent
        self.channel = channel
        self.sender = ShapedSender(
            channel, agent.link if agent.emulate_link else None, seed=agent.seed
        )
        self._lock = threading.Lock()
        self._unacked: dict[int, tuple[MessageKind, dict[str, Any], bytes]] = {}
        self._broken = threading.Event()
        self._bye = threading.Event()
        self.recut: int | None = None
        self._start_reader()
        agent.on_cut = self.cut

    def cut(self) -> None:
        """Drop the connection at once (the testbed's link-cut fault)."""
        self.channel.close()

    def send(
        self, key: int, kind: MessageKind, header: dict[str, Any], payload: bytes
    ) -> None:
        with self._lock:
            self._unacked[key] = (kind, header, payload)
        if self._broken.is_set():
            self._reconnect()
            return
        try:
            self.sender.send(kind, header, payload)
        except (OSError, ProtocolError):
            self._reconnect()

    def wait_for_bye(self) -> int:
        """Wait for the station's goodbye, reconnecting if the link drops."""
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._bye.wait(timeout=0.2):
                with contextlib.suppress(OSError, ProtocolError):
                    self.sender.close()
                self.channel.close()
                return 0
            if self._broken.is_set():
                self._reconnect()
        raise TimeoutError(f"no goodbye from the station in {IDLE_TIMEOUT_S:.0f} s")

    def _start_reader(self) -> None:
        threading.Thread(
            target=self._read, args=(self.channel,), name="uplink-read", daemon=True
        ).start()

    def _read(self, channel: Channel) -> None:
        while True:
            try:
                message = channel.recv(timeout_s=None)
            except (ProtocolError, OSError, TimeoutError):
                if channel is self.channel:
                    self._broken.set()
                return
            if message.kind == MessageKind.ACK:
                with self._lock:
                    self._unacked.pop(int(message.header["key"]), None)
            elif message.kind == MessageKind.PLAN:
                recut = int(message.header["recut"])
                assert self.agent.model is not None
                if 0 <= recut <= self.agent.model.num_stages:
                    self.recut = recut
                else:
                    logger.warning("ignored cut %d outside the model", recut)
            elif message.kind == MessageKind.BYE:
                self._bye.set()
                return

    def _reconnect(self) -> None:
        node = self.agent.config.node
        with contextlib.suppress(OSError, ProtocolError):
            self.sender.close()
        self.channel.close()
        self.channel = self.agent._connect(resume=True)
        self.sender = ShapedSender(self.channel, self.sender.spec, seed=self.agent.seed)
        self._broken.clear()
        self._start_reader()
        with self._lock:
            pending = list(self._unacked.values())
        logger.warning("device %s: reconnected, resending %d messages",
                       node, len(pending))  # fmt: skip
        for kind, header, payload in pending:
            self.sender.send(kind, header, payload)


def main() -> int:
    """Entry point of ``python -m splitlab.agent``."""
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("SPLITLAB_LOG", "WARNING"),
        format="%(asctime)s agent %(levelname)s %(message)s",
    )
    try:
        config = AgentConfig.from_json(sys.stdin.readline())
    except ValueError as error:
        logger.error("%s", error)
        return 3
    agent = DeviceAgent(config)
    signal.signal(signal.SIGUSR1, lambda *_: agent.cut_link())
    try:
        if config.warm is not None:
            agent.warm_up()
            print("ready", flush=True)
            # The testbed sets the CPU limit now, then lets the agent go.
            if sys.stdin.readline().strip() != "go":
                logger.error("device %s: the testbed did not say go", config.node)
                return 4
        return agent.serve()
    except ConnectionClosed:
        logger.error("device %s: the base station closed the connection", config.node)
        return 5
    except (SplitlabError, OSError, TimeoutError) as error:
        logger.error("device %s: %s", config.node, error)
        return getattr(error, "exit_code", 1)


if __name__ == "__main__":
    sys.exit(main())
