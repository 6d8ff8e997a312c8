"""Links between a device and the base station, and their emulation.

A link has a one-way latency, a rate and a jitter.  A message of ``s`` bytes
waits for the link to be free, occupies it for ``s / rate`` seconds, and is
delivered ``latency`` (plus jitter) after it has been put on the link.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """The configured properties of one device's link to the base station.

    Attributes
    ----------
    latency_s:
        One-way propagation delay ``d``, in seconds.
    rate_bps:
        Rate ``R`` in bits per second.
    jitter_s:
        Standard deviation of a zero-mean normal added to the latency of each
        message (truncated so the latency never goes below zero), in seconds.
    """

    latency_s: float
    rate_bps: float
    jitter_s: float = 0.0

    def transfer_s(self, size_bytes: int) -> float:
        """Expected one-way time of a ``size_bytes`` message on an idle link."""
        return self.latency_s + size_bytes * 8 / self.rate_bps
