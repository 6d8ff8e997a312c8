"""Node placement: positions in metres and the WiFi link they imply.

A device placed ``d`` metres from the base station gets the link an 802.11n
station at that distance would have, from a chain of small, documented
models (``docs/placement.md`` gives every figure and its source):

1. log-distance path loss at 2.4 GHz, ``PL(d) = PL(1 m) + 10 n log10(d)``,
   with the free-space loss at one metre and an indoor exponent ``n``;
2. received power ``P_tx - PL(d)`` and SNR over the thermal noise of a
   20 MHz channel plus the receiver's noise figure;
3. per 802.11n MCS (one stream, 20 MHz, long guard interval), a frame error
   rate that is the standard's 10 % at the MCS's minimum sensitivity and
   falls a decade every :data:`PER_DB_PER_DECADE` dB of margin above it;
4. the time one 1500-byte frame holds the medium under DCF (DIFS, mean
   backoff, HT preamble, data symbols, SIFS, ACK), retried up to the retry
   limit;
5. the MCS with the highest goodput, as a rate-adapting driver would pick.

The link's rate is that goodput; its latency is a base delay (driver, queue
and stack) plus the medium time per delivered frame; its loss is the share
of frames still lost after every retry.  All functions are pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from splitlab.errors import ConfigError

# Radio and channel -------------------------------------------------------

FREQUENCY_HZ = 2.412e9
"""Channel 1 of the 2.4 GHz band."""
SPEED_OF_LIGHT_M_S = 299_792_458.0
REFERENCE_DISTANCE_M = 1.0
PATH_LOSS_EXPONENT = 3.0
"""Indoor, through a few walls (free space is 2, obstructed buildings 4-6)."""
TX_POWER_DBM = 20.0
"""100 mW, the EIRP limit of the 2.4 GHz band in Europe."""
BANDWIDTH_HZ = 20e6
NOISE_FIGURE_DB = 10.0
"""The receiver noise figure the standard's sensitivity figures assume."""
THERMAL_NOISE_DBM_HZ = -174.0
MIN_DISTANCE_M = 0.1
"""Closer than this the far-field model does not hold; distances are clamped."""

# 802.11n, 20 MHz, one spatial stream, 800 ns guard interval -----------------

MCS_RATES_MBPS: tuple[float, ...] = (6.5, 13.0, 19.5, 26.0, 39.0, 52.0, 58.5, 65.0)
"""PHY data rate of MCS 0..7."""
MCS_BITS_PER_SYMBOL: tuple[int, ...] = (26, 52, 78, 104, 156, 208, 234, 260)
"""Data bits per 4 us OFDM symbol (N_DBPS) of MCS 0..7."""
MCS_SENSITIVITY_DBM: tuple[float, ...] = (-82, -79, -77, -74, -70, -66, -65, -64)
"""Minimum input level at which a receiver meets 10 % frame error, MCS 0..7."""
PER_AT_SENSITIVITY = 0.1
PER_DB_PER_DECADE = 2.0
"""dB of SNR margin that lower the frame error rate tenfold (coded OFDM waterfall)."""

SLOT_US = 9.0
SIFS_US = 10.0
DIFS_US = SIFS_US + 2 * SLOT_US
CW_MIN = 15
SIGNAL_EXTENSION_US = 6.0
"""Idle time after every OFDM frame in the 2.4 GHz band."""
HT_PREAMBLE_US = 36.0
"""HT-mixed preamble for one stream: L-STF, L-LTF, L-SIG, HT-SIG, HT-STF, HT-LTF."""
LEGACY_PREAMBLE_US = 20.0
ACK_BITS_PER_SYMBOL = 96
"""The ACK goes at the 24 Mbit/s basic rate."""
ACK_BYTES = 14
MAC_OVERHEAD_BYTES = 26 + 8 + 4
"""QoS data header, LLC/SNAP and FCS around each IP packet."""
PACKET_BYTES = 1500
SERVICE_TAIL_BITS = 16 + 6
RETRY_LIMIT = 7
"""Retransmissions after the first attempt (dot11ShortRetryLimit)."""

BASE_LATENCY_MS = 1.0
"""One-way delay outside the air: driver and AP queues, the IP stack."""


@dataclass(frozen=True, slots=True)
class WifiLink:
    """The link a position implies.

    Attributes
    ----------
    distance_m:
        Distance to the base station.
    path_loss_db, rx_power_dbm, snr_db:
        The radio chain at that distance.
    mcs:
        The 802.11n MCS with the highest goodput, or ``None`` out of range.
    phy_rate_mbps:
        That MCS's PHY rate (0 out of range).
    frame_error:
        Probability that one attempt of a frame fails.
    rate_mbps:
        Goodput of IP packets: what the link's rate is set to.
    latency_ms:
        One-way latency: :data:`BASE_LATENCY_MS` plus the medium time of one
        delivered frame.
    jitter_ms:
        Standard deviation of the backoff of one attempt.
    loss_percent:
        Frames lost after every retry, in percent.
    """

    distance_m: float
    path_loss_db: float
    rx_power_dbm: float
    snr_db: float
    mcs: int | None
    phy_rate_mbps: float
    frame_error: float
    rate_mbps: float
    latency_ms: float
    jitter_ms: float
    loss_percent: float

    @property
    def reachable(self) -> bool:
        """Whether any MCS carries traffic at this distance."""
        return self.mcs is not None


def distance_m(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two ``[x, y]`` positions in metres."""
    return math.hypot(a[0] - b[0], a[1] - b[1])


def path_loss_db(distance: float) -> float:
    """Log-distance path loss at ``distance`` metres (clamped below 0.1 m)."""
    wavelength_m = SPEED_OF_LIGHT_M_S / FREQUENCY_HZ
    reference_db = 20 * math.log10(4 * math.pi * REFERENCE_DISTANCE_M / wavelength_m)
    d = max(distance, MIN_DISTANCE_M)
    return reference_db + 10 * PATH_LOSS_EXPONENT * math.log10(d / REFERENCE_DISTANCE_M)


def noise_floor_dbm() -> float:
    """Thermal noise of the channel plus the receiver's noise figure."""
    return THERMAL_NOISE_DBM_HZ + 10 * math.log10(BANDWIDTH_HZ) + NOISE_FIGURE_DB


def required_snr_db(mcs: int) -> float:
    """The SNR at which MCS ``mcs`` has :data:`PER_AT_SENSITIVITY` frame error."""
    return MCS_SENSITIVITY_DBM[mcs] - noise_floor_dbm()


def frame_error(snr_db: float, mcs: int) -> float:
    """Probability that one attempt of a 1500-byte frame at ``mcs`` fails."""
    margin_db = snr_db - required_snr_db(mcs)
    return min(1.0, PER_AT_SENSITIVITY * 10 ** (-margin_db / PER_DB_PER_DECADE))


def _symbols(bits: int, bits_per_symbol: int) -> int:
    return -(-bits // bits_per_symbol)


def frame_airtime_us(mcs: int) -> float:
    """Medium time of one attempt: DIFS, mean backoff, data, SIFS and ACK."""
    data_bits = SERVICE_TAIL_BITS + 8 * (PACKET_BYTES + MAC_OVERHEAD_BYTES)
    data_us = (
        HT_PREAMBLE_US
        + 4 * _symbols(data_bits, MCS_BITS_PER_SYMBOL[mcs])
        + SIGNAL_EXTENSION_US
    )
    ack_us = (
        LEGACY_PREAMBLE_US
        + 4 * _symbols(SERVICE_TAIL_BITS + 8 * ACK_BYTES, ACK_BITS_PER_SYMBOL)
        + SIGNAL_EXTENSION_US
    )
    backoff_us = CW_MIN / 2 * SLOT_US
    return DIFS_US + backoff_us + data_us + SIFS_US + ack_us


def goodput_mbps(snr_db: float, mcs: int) -> tuple[float, float]:
    """IP goodput at ``mcs`` and the residual loss after every retry.

    Returns
    -------
    tuple
        ``(goodput_mbps, residual_loss)``; the goodput is 0 when every
        attempt fails.
    """
    error = frame_error(snr_db, mcs)
    if error >= 1.0:
        return 0.0, 1.0
    residual = error ** (RETRY_LIMIT + 1)
    attempts = (1 - residual) / (1 - error)
    delivered_bits = 8 * PACKET_BYTES * (1 - residual)
    return delivered_bits / (attempts * frame_airtime_us(mcs)), residual


def wifi_link(distance: float) -> WifiLink:
    """The 802.11n link of a station ``distance`` metres from the access point.

    Raises
    ------
    ConfigError
        If ``distance`` is negative or not finite.
    """
    if not math.isfinite(distance) or distance < 0:
        raise ConfigError(f"distance must be a finite number >= 0 m, got {distance!r}")
    loss_db = path_loss_db(distance)
    rx_dbm = TX_POWER_DBM - loss_db
    snr = rx_dbm - noise_floor_dbm()

    best: tuple[float, float, int] | None = None
    for mcs in range(len(MCS_RATES_MBPS)):
        rate, residual = goodput_mbps(snr, mcs)
        if rate > 0 and (best is None or rate > best[0]):
            best = (rate, residual, mcs)
    backoff_sd_us = SLOT_US * math.sqrt(((CW_MIN + 1) ** 2 - 1) / 12)
    if best is None:
        return WifiLink(
            distance_m=distance,
            path_loss_db=loss_db,
            rx_power_dbm=rx_dbm,
            snr_db=snr,
            mcs=None,
            phy_rate_mbps=0.0,
            frame_error=1.0,
            rate_mbps=0.0,
            latency_ms=math.inf,
            jitter_ms=0.0,
            loss_percent=100.0,
        )
    rate, residual, mcs = best
    frame_ms = 8 * PACKET_BYTES / (rate * 1e6) * 1e3
    return WifiLink(
        distance_m=distance,
        path_loss_db=loss_db,
        rx_power_dbm=rx_dbm,
        snr_db=snr,
        mcs=mcs,
        phy_rate_mbps=MCS_RATES_MBPS[mcs],
        frame_error=frame_error(snr, mcs),
        rate_mbps=rate,
        latency_ms=BASE_LATENCY_MS + frame_ms,
        jitter_ms=backoff_sd_us / 1e3,
        loss_percent=residual * 100,
    )


def wifi_range_m() -> float:
    """The largest distance at which MCS 0 still carries traffic, in metres.

    MCS 0 fails every attempt once the SNR margin is below
    ``-PER_DB_PER_DECADE`` dB; the range is where that happens.
    """
    budget_db = (
        TX_POWER_DBM
        - noise_floor_dbm()
        - required_snr_db(0)
        + PER_DB_PER_DECADE * math.log10(1 / PER_AT_SENSITIVITY)
    )
    excess_db = budget_db - path_loss_db(REFERENCE_DISTANCE_M)
    return REFERENCE_DISTANCE_M * 10 ** (excess_db / (10 * PATH_LOSS_EXPONENT))


def link_fields(
    device: Sequence[float], base_station: Sequence[float], *, name: str = "device"
) -> dict[str, float]:
    """The scenario ``link`` of a device at ``device`` with the BS at ``base_station``.

    Values are rounded to microseconds and kbit/s so a saved scenario reads
    cleanly.

    Raises
    ------
    ConfigError
        If the device is out of the BS's WiFi range.
    """
    link = wifi_link(distance_m(device, base_station))
    if not link.reachable:
        raise ConfigError(
            f"{name} at {link.distance_m:.1f} m from the base station is out of "
            f"WiFi range ({wifi_range_m():.1f} m): place it closer or give its link"
        )
    return {
        "latency_ms": round(link.latency_ms, 3),
        "rate_mbps": round(link.rate_mbps, 3),
        "jitter_ms": round(link.jitter_ms, 3),
    }
