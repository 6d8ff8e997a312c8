"""Device classes as CPU shares of this machine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from splitlab import calibration
from splitlab.calibration import CLASSES, Calibration, calibrate, class_share
from splitlab.cli import main
from splitlab.errors import ConfigError
from splitlab.scenario import parse_scenario


def test_share_is_the_ratio_of_speeds_within_bounds() -> None:
    assert class_share(6.0, 100.0) == pytest.approx(0.06)
    assert class_share(2.5, 50.0) == pytest.approx(0.05)
    # A board faster than a core here gets the whole core; a tiny one the floor.
    assert class_share(80.0, 40.0) == 1.0
    assert class_share(0.1, 1000.0) == calibration.MIN_SHARE
    with pytest.raises(ConfigError, match="machine GFLOP/s must be positive"):
        class_share(6.0, 0.0)


def test_a_calibration_gives_every_class_its_share() -> None:
    measured = Calibration("cpu", "torch", 120.0, 0.05, 9, 0.0)
    assert measured.share("rpi4") == pytest.approx(6.0 / 120.0)
    assert measured.share("rpi3") == pytest.approx(2.5 / 120.0)
    assert measured.share("jetson-nano") == pytest.approx(4.0 / 120.0)
    assert measured.share("laptop") == pytest.approx(80.0 / 120.0)
    record = measured.record()
    assert record["shares"] == {name: measured.share(name) for name in CLASSES}
    with pytest.raises(ConfigError, match="unknown device class 'cray'"):
        measured.share("cray")


def test_a_real_measurement_is_positive_and_finite() -> None:
    gflops, spread = calibration.measure_gflops(size=128, repeats=3, repeat_s=0.05)
    assert math.isfinite(gflops) and gflops > 0
    assert 0 <= spread < 10


def test_the_cache_is_reused_and_force_measures_again(tmp_path: Path) -> None:
    first = calibrate(root=tmp_path)
    path = calibration.cache_file(tmp_path)
    assert json.loads(path.read_text())["gflops"] == first.gflops
    # A hand-edited cache is what the next call returns: nothing is measured.
    path.write_text(json.dumps({**json.loads(path.read_text()), "gflops": 12.5}))
    assert calibrate(root=tmp_path).gflops == 12.5
    assert calibrate(root=tmp_path).share("rpi4") == pytest.approx(6.0 / 12.5)
    again = calibrate(root=tmp_path, force=True)
    assert again.gflops != 12.5 and again.measured_at >= first.measured_at


def test_class_share_comes_from_the_calibration_and_cpu_share_wins() -> None:
    link = {"latency_ms": 1, "rate_mbps": 1}
    devices = [
        {"name": "a", "class": "rpi3", "link": link},
        {"name": "b", "class": "rpi3", "cpu_share": 0.3, "link": link},
        {"name": "c", "class": "jetson-nano", "link": link},
    ]
    scenario = parse_scenario(
        {"name": "c", "model": "mlp", "devices": devices}, source="test"
    )
    a, b, c = scenario.devices
    assert a.share == pytest.approx(calibration.current().share("rpi3"))
    assert b.share == 0.3
    assert c.memory_bytes == 4096 * 2**20
    assert a.memory_bytes == 1024 * 2**20


def test_cli_prints_every_class() -> None:
    result = CliRunner().invoke(main, ["calibrate"])
    assert result.exit_code == 0, result.output
    for name in CLASSES:
        assert name in result.output
    assert "GFLOP/s" in result.output
