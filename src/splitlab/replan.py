"""Re-planning during a run: noticing that the testbed no longer fits the plan.

The station compares every finished task with what the plan assumed: the
device's head time against its profile, and the time on the link against the
link model.  When the median ratio over a device's last ``window`` tasks is
off by more than ``threshold`` (0.5: half again as slow, or twice as fast),
the device's profile or link is rescaled by that ratio and the scheme is
planned anew for the tasks not yet generated.  Everything here is pure; the
station sends the new cuts and records each re-plan with its cause.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile

Quantity = Literal["device compute", "link transfer"]


@dataclass(frozen=True, slots=True)
class Drift:
    """A device whose measurements left the plan's assumptions.

    Attributes
    ----------
    device:
        The device's name.
    quantity:
        What drifted.
    ratio:
        Median of measured over assumed, over the window.
    """

    device: str
    quantity: Quantity
    ratio: float

    def describe(self) -> str:
        """One line for the run's log."""
        return f"{self.device}: {self.quantity} at {self.ratio:.2f}x the plan's"


class DriftWatch:
    """Per-device windows of measured/assumed ratios.

    Parameters
    ----------
    threshold:
        Relative departure from 1 that triggers a re-plan.
    window:
        Tasks a median is taken over; a device is watched again only after
        a full new window.
    """

    def __init__(self, *, threshold: float, window: int) -> None:
        if threshold <= 0 or window < 1:
            raise ValueError(f"threshold {threshold} and window {window} must be >0")
        self.threshold = threshold
        self.window = window
        self._ratios: dict[tuple[str, Quantity], deque[float]] = {}

    def observe(self, device: str, quantity: Quantity, ratio: float) -> Drift | None:
        """Add one task's ratio; return a drift when the window's median is off."""
        key = (device, quantity)
        ratios = self._ratios.setdefault(key, deque(maxlen=self.window))
        ratios.append(ratio)
        if len(ratios) < self.window:
            return None
        median = statistics.median(ratios)
        if abs(median - 1.0) <= self.threshold:
            return None
        ratios.clear()
        return Drift(device, quantity, median)


def rescaled_profile(profile: NodeProfile, ratio: float) -> NodeProfile:
    """``profile`` with every stage ``ratio`` times as long."""
    return replace(
        profile,
        stages=tuple(
            replace(stage, median_s=stage.median_s * ratio, p95_s=stage.p95_s * ratio)
            for stage in profile.stages
        ),
    )


def rescaled_link(link: LinkSpec, ratio: float) -> LinkSpec:
    """``link`` with every transfer ``ratio`` times as long."""
    return LinkSpec(
        latency_s=link.latency_s * ratio,
        rate_bps=link.rate_bps / ratio,
        jitter_s=link.jitter_s,
    )
