"""Per-stage profiles: how long each stage takes on a node and what it emits.

A profile is measured on the node itself, under its own CPU limit and load:
every stage is timed over ``repeats`` passes after ``warmup`` passes, and the
median and 95th percentile are kept.  ``output_bytes[k]`` is the size of the
tensor that crosses the link at cut ``k`` (``k = 0`` is the raw input).
"""

from __future__ import annotations

from dataclasses import dataclass


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
