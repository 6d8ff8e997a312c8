"""Per-stage profiles: how long each stage takes on a node and what it emits.

A profile is measured on the node itself, under its own CPU limit and load:
every stage is timed over ``repeats`` passes after ``warmup`` passes, and the
median and 95th percentile are kept.  ``output_bytes[k]`` is the size of the
tensor that crosses the link at cut ``k`` (``k = 0`` is the raw input).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from splitlab.models import StagedModel


@dataclass(frozen=True, slots=True)
class StageProfile:
    """Timing and sizes of one stage on one node.

    Attributes
    ----------
    name:
        The stage's name in the model (``conv1``, ``fc3``...).
    median_s, p95_s:
        Median and 95th percentile of the stage's run time, in seconds.
    output_bytes:
        Bytes of the tensor the stage emits (what crosses a cut after it).
    param_bytes:
        Bytes of the stage's weights.
    """

    name: str
    median_s: float
    p95_s: float
    output_bytes: int
    param_bytes: int


@dataclass(frozen=True, slots=True)
class NodeProfile:
    """Every stage of one model profiled on one node.

    Attributes
    ----------
    node:
        The node's name in the scenario.
    model:
        The model's registry name.
    input_bytes:
        Bytes of one input sample, ``s(0)``.
    stages:
        One :class:`StageProfile` per stage, in execution order.
    warmup, repeats:
        How many untimed and timed passes the figures come from.
    """

    node: str
    model: str
    input_bytes: int
    stages: tuple[StageProfile, ...]
    warmup: int = 0
    repeats: int = 0

    @property
    def num_stages(self) -> int:
        """``L``, the number of stages."""
        return len(self.stages)

    def cut_bytes(self, cut: int) -> int:
        """Bytes that cross the link at ``cut`` (the input when ``cut == 0``)."""
        if not 0 <= cut <= self.num_stages:
            raise ValueError(f"cut {cut} outside 0..{self.num_stages}")
        return self.input_bytes if cut == 0 else self.stages[cut - 1].output_bytes

    def head_s(self, cut: int) -> float:
        """Median time of stages ``1..cut`` on this node, in seconds."""
        return sum(stage.median_s for stage in self.stages[:cut])

    def tail_s(self, cut: int) -> float:
        """Median time of stages ``cut+1..L`` on this node, in seconds."""
        return sum(stage.median_s for stage in self.stages[cut:])

    def head_param_bytes(self, cut: int) -> int:
        """Bytes of the weights of stages ``1..cut``."""
        return sum(stage.param_bytes for stage in self.stages[:cut])


def profile_model(
    model: StagedModel,
    sample: torch.Tensor,
    *,
    node: str,
    warmup: int,
    repeats: int,
) -> NodeProfile:
    """Time every stage of ``model`` on this process, under its current limits.

    Each pass runs the whole chain stage by stage on ``sample`` (batch of one)
    and times each stage with a monotonic clock, so a stage sees the cache
    state it sees in a real run.
    """
    # torch is imported here so that planning code, which reads profiles but
    # never runs a model, does not load it.
    import torch

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    timings_s = [[0.0] * repeats for _ in range(model.num_stages)]
    output_bytes = [0] * model.num_stages

    with torch.inference_mode():
        for pass_index in range(warmup + repeats):
            x = sample
            for index, stage in enumerate(model.stages):
                started_s = time.perf_counter()
                x = stage(x)
                elapsed_s = time.perf_counter() - started_s
                if pass_index >= warmup:
                    timings_s[index][pass_index - warmup] = elapsed_s
                output_bytes[index] = x.numel() * x.element_size()

    stages = []
    for index, name in enumerate(model.stage_names):
        ordered = sorted(timings_s[index])
        stages.append(
            StageProfile(
                name=name,
                median_s=statistics.median(ordered),
                p95_s=ordered[
                    min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)
                ],
                output_bytes=output_bytes[index],
                param_bytes=model.stage_param_bytes(index),
            )
        )
    return NodeProfile(
        node=node,
        model=model.model_name,
        input_bytes=sample.numel() * sample.element_size(),
        stages=tuple(stages),
        warmup=warmup,
        repeats=repeats,
    )


def profile_to_dict(profile: NodeProfile) -> dict[str, Any]:
    """A JSON-ready form of ``profile`` (for the wire and the store)."""
    return asdict(profile)


def profile_from_dict(data: Mapping[str, Any]) -> NodeProfile:
    """Rebuild a profile from :func:`profile_to_dict`'s output, checking types."""
    try:
        stages = tuple(
            StageProfile(
                name=str(stage["name"]),
                median_s=float(stage["median_s"]),
                p95_s=float(stage["p95_s"]),
                output_bytes=int(stage["output_bytes"]),
                param_bytes=int(stage["param_bytes"]),
            )
            for stage in data["stages"]
        )
        return NodeProfile(
            node=str(data["node"]),
            model=str(data["model"]),
            input_bytes=int(data["input_bytes"]),
            stages=stages,
            warmup=int(data["warmup"]),
            repeats=int(data["repeats"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed profile: {error!r}") from None
