"""Per-stage profiles: how long each stage takes on a node and what it emits.

A profile is measured on the node itself, under its own CPU limit and load:
every stage is timed over ``repeats`` passes after ``warmup`` passes, and the
median and 95th percentile are kept.  ``output_bytes[k]`` is the size of the
tensor that crosses the link at cut ``k`` (``k = 0`` is the raw input) as
float32; ``codec_bytes`` holds the size of the same tensor after each codec
asked for (:mod:`splitlab.codec`), measured by encoding the real sample's
activation.  A profile made for a device carries that device's codec, and
:meth:`NodeProfile.cut_bytes` answers in that codec's bytes, so the planner's
transmission term is what the device really sends.

Besides time, one more pass over the sample measures each stage's FLOPs
(:class:`torch.utils.flop_counter.FlopCounterMode`) and peak activation
bytes (followed allocation by allocation); :mod:`splitlab.footprint` says
what each figure counts and what it leaves out.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from splitlab.models import StagedModel

FP32 = "fp32"
"""The codec whose bytes :attr:`StageProfile.output_bytes` are."""


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
    flops:
        Floating-point operations of one pass on one sample (0 if unmeasured).
    peak_activation_bytes:
        The most activation memory the stage holds at once, input included
        (0 if unmeasured); see the module's description.
    codec_bytes:
        Bytes of the stage's output after each measured codec, by codec name.
    """

    name: str
    median_s: float
    p95_s: float
    output_bytes: int
    param_bytes: int
    flops: int = 0
    peak_activation_bytes: int = 0
    codec_bytes: Mapping[str, int] = field(default_factory=dict)


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
    input_codec_bytes:
        Bytes of the input after each measured codec, by codec name.
    codec:
        The codec the node sends its cut tensor with; :meth:`cut_bytes`
        counts in its bytes when they were measured.
    """

    node: str
    model: str
    input_bytes: int
    stages: tuple[StageProfile, ...]
    warmup: int = 0
    repeats: int = 0
    input_codec_bytes: Mapping[str, int] = field(default_factory=dict)
    codec: str = FP32

    @property
    def num_stages(self) -> int:
        """``L``, the number of stages."""
        return len(self.stages)

    def cut_bytes(self, cut: int, codec: str | None = None) -> int:
        """Bytes that cross the link at ``cut`` (the input when ``cut == 0``).

        Counted in ``codec``'s bytes (by default the node's own codec) when
        they were measured, else as float32.
        """
        if not 0 <= cut <= self.num_stages:
            raise ValueError(f"cut {cut} outside 0..{self.num_stages}")
        codec = self.codec if codec is None else codec
        if cut == 0:
            return self.input_codec_bytes.get(codec, self.input_bytes)
        stage = self.stages[cut - 1]
        return stage.codec_bytes.get(codec, stage.output_bytes)

    def head_s(self, cut: int) -> float:
        """Median time of stages ``1..cut`` on this node, in seconds."""
        return sum(stage.median_s for stage in self.stages[:cut])

    def tail_s(self, cut: int) -> float:
        """Median time of stages ``cut+1..L`` on this node, in seconds."""
        return sum(stage.median_s for stage in self.stages[cut:])

    def head_param_bytes(self, cut: int) -> int:
        """Bytes of the weights of stages ``1..cut``."""
        return sum(stage.param_bytes for stage in self.stages[:cut])

    def head_peak_activation_bytes(self, cut: int) -> int:
        """The most activation memory any of stages ``1..cut`` holds at once.

        Stages run one after another, so the head's peak is the largest
        stage's peak (0 for ``cut == 0`` or an unmeasured profile).
        """
        return max(
            (stage.peak_activation_bytes for stage in self.stages[:cut]), default=0
        )

    def head_memory_bytes(self, cut: int) -> int:
        """Memory the head needs: its weights and its peak activations."""
        return self.head_param_bytes(cut) + self.head_peak_activation_bytes(cut)


def _run_stage(model: StagedModel, index: int, x: torch.Tensor) -> torch.Tensor:
    return model.run(x, index, index + 1)


def profile_model(
    model: StagedModel,
    sample: torch.Tensor,
    *,
    node: str,
    warmup: int,
    repeats: int,
    codec: str = FP32,
    codecs: Iterable[str] = (),
) -> NodeProfile:
    """Profile every stage of ``model`` on this process, under its current limits.

    Each pass runs the whole chain stage by stage on ``sample`` (batch of one)
    and times each stage with a monotonic clock, so a stage sees the cache
    state it sees in a real run.  One more, untimed pass counts FLOPs and
    peak activation memory and encodes every stage's output with ``codec``
    and each of ``codecs``.
    """
    # torch is imported here so that planning code, which reads profiles but
    # never runs a model, does not load it.
    import torch

    from splitlab.codec import encode, parse_codec
    from splitlab.footprint import measure_stage

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    measured = tuple(dict.fromkeys((FP32, codec, *codecs)))
    for name in measured:
        parse_codec(name)
    timings_s = [[0.0] * repeats for _ in range(model.num_stages)]

    with torch.inference_mode():
        for pass_index in range(warmup + repeats):
            x = sample
            for index, stage in enumerate(model.stages):
                started_s = time.perf_counter()
                x = stage(x)
                elapsed_s = time.perf_counter() - started_s
                if pass_index >= warmup:
                    timings_s[index][pass_index - warmup] = elapsed_s

    def encoded_bytes(tensor: torch.Tensor) -> dict[str, int]:
        array = tensor.contiguous().numpy()
        return {name: len(encode(array, name)[1]) for name in measured}

    stages = []
    with torch.inference_mode():
        x = sample
        for index, name in enumerate(model.stage_names):
            # Through ``run``, so an ONNX stage is measured as it runs (its
            # operators are not torch's: no FLOPs are counted for them).
            flops, peak_bytes, output = measure_stage(
                functools.partial(_run_stage, model, index), x
            )
            ordered = sorted(timings_s[index])
            stages.append(
                StageProfile(
                    name=name,
                    median_s=statistics.median(ordered),
                    p95_s=ordered[
                        min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)
                    ],
                    output_bytes=output.numel() * output.element_size(),
                    param_bytes=model.stage_param_bytes(index),
                    flops=flops,
                    peak_activation_bytes=peak_bytes,
                    codec_bytes=encoded_bytes(output),
                )
            )
            x = output
    return NodeProfile(
        node=node,
        model=model.model_name,
        input_bytes=sample.numel() * sample.element_size(),
        stages=tuple(stages),
        warmup=warmup,
        repeats=repeats,
        input_codec_bytes=encoded_bytes(sample),
        codec=codec,
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
                flops=int(stage.get("flops", 0)),
                peak_activation_bytes=int(stage.get("peak_activation_bytes", 0)),
                codec_bytes=_byte_counts(stage.get("codec_bytes", {})),
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
            input_codec_bytes=_byte_counts(data.get("input_codec_bytes", {})),
            codec=str(data.get("codec", FP32)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"malformed profile: {error!r}") from None


def _byte_counts(data: Mapping[str, Any]) -> dict[str, int]:
    return {str(name): int(count) for name, count in data.items()}
