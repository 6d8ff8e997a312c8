"""The device agent: one end device of a run, as its own process.

The agent connects to the base station, says who it is, profiles the model
on itself when asked, then runs its tasks: each task's head (stages
``1..k``) on its own CPU, in arrival order, and hands the cut tensor to its
emulated link.  It performs only these operations; nothing it receives is
executed or unpickled.

Started by the testbed as ``python -m splitlab.agent``, it reads one JSON
line on standard input: ``{"host", "port", "node", "secret", "threads"}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitlab.data import load_held_out
from splitlab.errors import ProtocolError, SplitlabError
from splitlab.lifetime import die_with_parent
from splitlab.limit import seen_limit
from splitlab.link import LinkSpec
from splitlab.models import StagedModel
from splitlab.profile import profile_model, profile_to_dict
from splitlab.shaping import ShapedSender
from splitlab.weights import load_trained
from splitlab.wire import (
    Channel,
    ConnectionClosed,
    Message,
    MessageKind,
    tensor_header,
    tensor_payload,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
# Between messages the agent may wait through the whole profiling and
# planning phase of the other nodes.
IDLE_TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the testbed tells an agent when it starts it."""

    host: str
    port: int
    node: str
    secret: bytes
    threads: int = 1

    @classmethod
    def from_json(cls, line: str) -> AgentConfig:
        """Parse the start-up line; :class:`ValueError` names what is wrong."""
        data = json.loads(line)
        try:
            return cls(
                host=str(data["host"]),
                port=int(data["port"]),
                node=str(data["node"]),
                secret=bytes.fromhex(data["secret"]),
                threads=int(data.get("threads", 1)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"bad agent configuration: {error!r}") from None


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
        self.images: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self.link: LinkSpec | None = None
        self.seed = 0

    def serve(self) -> int:
        """Run until the base station says goodbye; return the exit status."""
        torch.set_num_threads(self.config.threads)
        channel = Channel.connect(
            self.config.host,
            self.config.port,
            secret=self.config.secret,
            node=self.config.node,
            timeout_s=CONNECT_TIMEOUT_S,
        )
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
            },
        )
        try:
            while True:
                message = channel.recv(timeout_s=IDLE_TIMEOUT_S)
                if message.kind == MessageKind.BYE:
                    return 0
                if message.kind == MessageKind.PROFILE:
                    channel.send(MessageKind.PROFILE, self._profile(message))
                elif message.kind == MessageKind.PLAN:
                    self._run_tasks(channel, message)
                else:
                    raise ProtocolError(
                        f"device {self.config.node} got an unexpected "
                        f"{message.kind.name} message"
                    )
        finally:
            channel.close()

    def _profile(self, message: Message) -> dict[str, Any]:
        request = message.header
        dataset = load_held_out(
            str(request["dataset"]),
            data_dir=Path(request["data_dir"]) if request.get("data_dir") else None,
            test_fraction=float(request["test_fraction"]),
            seed=int(request["seed"]),
        )
        self.images = dataset.images
        self.model = load_trained(
            str(request["model"]),
            Path(request["weights"]),
            classes=len(dataset.classes),
        )
        link = request["link"]
        self.link = LinkSpec(
            latency_s=float(link["latency_s"]),
            rate_bps=float(link["rate_bps"]),
            jitter_s=float(link["jitter_s"]),
        )
        self.seed = int(request["seed"])
        sample = torch.tensor(self.images[int(request["sample"])][None])
        profile = profile_model(
            self.model,
            sample,
            node=self.config.node,
            warmup=int(request["warmup"]),
            repeats=int(request["repeats"]),
        )
        reply = profile_to_dict(profile)
        reply["rss_bytes"] = resident_bytes()
        return reply

    def _run_tasks(self, channel: Channel, message: Message) -> None:
        if self.model is None or self.images is None or self.link is None:
            raise ProtocolError(
                f"device {self.config.node} got a plan before profiling"
            )
        model, images = self.model, self.images
        cut = int(message.header["cut"])
        model.check_cut(cut)
        start_at = float(message.header["start_at"])
        sender = ShapedSender(channel, self.link, seed=self.seed)

        # One loop is the device's single CPU: a task that arrives while the
        # previous one still runs waits, as it would on the board.
        with torch.inference_mode():
            for task_id, sample, arrival_s in message.header["tasks"]:
                arrival_at = start_at + float(arrival_s)
                pause_s = arrival_at - time.time()
                if pause_s > 0:
                    time.sleep(pause_s)
                started_at = time.time()
                x = torch.tensor(images[int(sample)][None])
                output = model.run(x, 0, cut).contiguous().numpy()
                finished_at = time.time()
                header = {
                    "task_id": int(task_id),
                    "cut": cut,
                    "arrival_at": arrival_at,
                    "started_at": started_at,
                    "finished_at": finished_at,
                    "tensor": tensor_header(output),
                }
                kind = (
                    MessageKind.RESULT
                    if cut == model.num_stages
                    else MessageKind.TENSOR
                )
                sender.send(kind, header, tensor_payload(output))
        sender.send(MessageKind.DONE, {"tasks": len(message.header["tasks"])}, b"")
        sender.close()


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
    try:
        return DeviceAgent(config).serve()
    except ConnectionClosed:
        logger.error("device %s: the base station closed the connection", config.node)
        return 5
    except (SplitlabError, OSError, TimeoutError) as error:
        logger.error("device %s: %s", config.node, error)
        return getattr(error, "exit_code", 1)


if __name__ == "__main__":
    sys.exit(main())
