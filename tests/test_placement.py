"""The WiFi model from distance to link, and links derived from positions."""

from __future__ import annotations

import itertools
import math

import pytest
import yaml

from splitlab import placement
from splitlab.errors import ConfigError
from splitlab.placement import (
    frame_airtime_us,
    link_fields,
    noise_floor_dbm,
    path_loss_db,
    wifi_link,
    wifi_range_m,
)
from splitlab.scenario import parse_scenario

DISTANCES_M = [d / 2 for d in range(0, 2 * 135)]


def test_free_space_loss_at_one_metre_and_three_decibels_per_doubling_times_n() -> None:
    # 20 log10(4 pi / lambda) with lambda = c / 2.412 GHz = 0.1243 m.
    assert path_loss_db(1.0) == pytest.approx(40.09, abs=0.01)
    # n = 3: every tenfold distance adds 30 dB.
    assert path_loss_db(10.0) - path_loss_db(1.0) == pytest.approx(30.0)
    assert path_loss_db(0.0) == path_loss_db(0.1)


def test_noise_floor_of_a_20_mhz_channel() -> None:
    # -174 dBm/Hz + 73.01 dB (20 MHz) + 10 dB noise figure.
    assert noise_floor_dbm() == pytest.approx(-90.99, abs=0.01)


def test_frame_airtime_by_hand_for_mcs7_and_mcs0() -> None:
    # MCS 7: 1538 bytes + 22 bits = 12326 bits over 260 bits a symbol = 48
    # symbols = 192 us; + 36 us preamble + 6 us extension = 234 us of data.
    # ACK: 134 bits at 96 a symbol = 2 symbols; 20 + 8 + 6 = 34 us.
    # DIFS 28 + backoff 7.5 * 9 = 67.5 + SIFS 10.
    assert frame_airtime_us(7) == pytest.approx(28 + 67.5 + 234 + 10 + 34)
    # MCS 0: 12326 / 26 = 474.08 -> 475 symbols = 1900 us.
    assert frame_airtime_us(0) == pytest.approx(28 + 67.5 + 36 + 1900 + 6 + 10 + 34)


def test_a_point_computed_by_hand_at_ten_metres() -> None:
    link = wifi_link(10.0)
    assert link.rx_power_dbm == pytest.approx(20 - 70.095, abs=0.01)
    assert link.snr_db == pytest.approx(-50.095 + 90.990, abs=0.01)
    # 40.9 dB is 14 dB above what MCS 7 needs (-64 dBm - noise = 26.99 dB):
    # frame error 0.1 * 10^(-13.9/2), no retry worth counting.
    assert link.mcs == 7
    margin_db = 40.895 - 26.990
    assert link.frame_error == pytest.approx(0.1 * 10 ** (-margin_db / 2), rel=1e-3)
    goodput = 12000 / 373.5  # bits per microsecond = Mbit/s
    assert link.rate_mbps == pytest.approx(goodput, rel=1e-6)
    assert link.latency_ms == pytest.approx(1.0 + 12000 / (goodput * 1e6) * 1e3)
    assert link.loss_percent < 1e-40


def test_rate_and_latency_are_monotone_in_distance() -> None:
    links = [wifi_link(d) for d in DISTANCES_M]
    assert all(link.reachable for link in links)
    for near, far in itertools.pairwise(links):
        assert far.rate_mbps <= near.rate_mbps
        assert far.latency_ms >= near.latency_ms
        assert far.snr_db <= near.snr_db
        assert far.mcs is not None and near.mcs is not None
        assert far.mcs <= near.mcs
    # The model spans 802.11n's range: MCS 7 near, MCS 0 at the edge.
    assert links[0].mcs == 7 and links[-1].mcs == 0
    assert 30 < links[0].rate_mbps < 65
    # At the edge most attempts fail: little gets through, slowly.
    assert 0 < links[-1].rate_mbps < 1
    assert links[-1].loss_percent > 10


def test_loss_grows_with_distance_at_one_mcs() -> None:
    at_mcs0 = [wifi_link(d) for d in range(110, 135)]
    assert {link.mcs for link in at_mcs0} == {0}
    losses = [link.loss_percent for link in at_mcs0]
    assert losses == sorted(losses)
    assert losses[-1] > losses[0] > 0


def test_beyond_range_nothing_gets_through() -> None:
    edge = wifi_range_m()
    assert 130 < edge < 140
    assert wifi_link(edge * 0.999).reachable
    beyond = wifi_link(edge * 1.001)
    assert not beyond.reachable
    assert beyond.rate_mbps == 0 and beyond.loss_percent == 100
    assert math.isinf(beyond.latency_ms)
    with pytest.raises(ConfigError, match=r"pi at 140.0 m .* out of WiFi range"):
        link_fields([140, 0], [0, 0], name="pi")


def test_a_negative_or_infinite_distance_is_refused() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="distance must be"):
            wifi_link(bad)


def test_link_fields_measure_from_the_base_station() -> None:
    assert link_fields([13, 4], [10, 0]) == link_fields([5, 0], [0, 0])
    fields = link_fields([5, 0], [0, 0])
    assert set(fields) == {"latency_ms", "rate_mbps", "jitter_ms"}
    assert fields["rate_mbps"] == round(wifi_link(5).rate_mbps, 3)


def _scenario(devices: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {"name": "placed", "devices": devices, **extra}


def test_a_placed_device_gets_its_link_from_the_model() -> None:
    scenario = parse_scenario(
        _scenario(
            [{"name": "a", "class": "rpi4", "position_m": [30, 40]}],
            base_station={"position_m": [0, 0]},
        ),
        source="s.yaml",
    )
    device = scenario.devices[0]
    assert device.position_m == (30.0, 40.0)
    expected = wifi_link(50.0)
    assert device.link.rate_mbps == pytest.approx(expected.rate_mbps, abs=5e-4)
    assert device.link.latency_ms == pytest.approx(expected.latency_ms, abs=5e-4)
    # The derived link is written out with the scenario, so a run records it.
    again = parse_scenario(yaml.safe_load(scenario.to_yaml()), source="again")
    assert again == scenario


def test_the_base_station_defaults_to_the_origin() -> None:
    moved = parse_scenario(
        _scenario(
            [{"name": "a", "class": "rpi4", "position_m": [60, 0]}],
            base_station={"position_m": [50, 0]},
        ),
        source="s",
    )
    default = parse_scenario(
        _scenario([{"name": "a", "class": "rpi4", "position_m": [10, 0]}]), source="s"
    )
    assert moved.devices[0].link == default.devices[0].link
    assert default.base_station.position_m is None


def test_a_hand_set_link_overrides_the_position() -> None:
    scenario = parse_scenario(
        _scenario(
            [
                {
                    "name": "a",
                    "class": "rpi4",
                    "position_m": [100, 0],
                    "link": {"latency_ms": 7, "rate_mbps": 3},
                },
            ]
        ),
        source="s",
    )
    assert scenario.devices[0].link.rate_mbps == 3
    assert scenario.devices[0].link.latency_ms == 7


def test_out_of_range_and_unplaced_devices_are_named() -> None:
    with pytest.raises(ConfigError, match=r"devices\[1\] at 200.0 m .* out of WiFi"):
        parse_scenario(
            _scenario(
                [
                    {"name": "a", "class": "rpi4", "position_m": [1, 0]},
                    {"name": "b", "class": "rpi4", "position_m": [200, 0]},
                ]
            ),
            source="s",
        )
    with pytest.raises(ConfigError, match=r"s: devices\[0\].link: Field required"):
        parse_scenario(_scenario([{"name": "a", "class": "rpi4"}]), source="s")
    with pytest.raises(ConfigError, match=r"devices\[0\].position_m\[1\]"):
        parse_scenario(
            _scenario([{"name": "a", "class": "rpi4", "position_m": [1, "x"]}]),
            source="s",
        )


def test_the_model_s_figures_are_the_documented_ones() -> None:
    # docs/placement.md lists these; a change here must change the page too.
    assert placement.MCS_RATES_MBPS[-1] == 65.0
    assert placement.MCS_SENSITIVITY_DBM == (-82, -79, -77, -74, -70, -66, -65, -64)
    assert placement.PATH_LOSS_EXPONENT == 3.0
    assert placement.TX_POWER_DBM == 20.0
