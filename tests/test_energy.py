"""Energy per task from the power model, and hwmon power meters."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitlab.energy import (
    POWER_MODELS,
    HwmonPowerMeter,
    PowerModel,
    PowerReading,
    energy_j,
    find_hwmon,
    load_meter,
    mean_by_device,
    run_energy,
    task_energy,
)
from splitlab.errors import ConfigError, TestbedError
from splitlab.report import summarise
from splitlab.results import NodeRecord, ResultStore, TaskRecord


def test_power_is_linear_in_utilisation() -> None:
    model = PowerModel(idle_w=2.0, busy_w=4.0, radio_w=1.0)
    assert model.power_w(0.0) == 2.0
    assert model.power_w(0.25) == 2.5
    assert model.power_w(1.0) == 4.0
    assert model.power_w(3.0) == 4.0
    assert set(POWER_MODELS) == {"rpi4", "rpi3", "jetson-nano", "laptop"}
    for each in POWER_MODELS.values():
        assert 0 < each.idle_w < each.busy_w and each.radio_w > 0


def test_task_energy_by_hand() -> None:
    model = PowerModel(idle_w=2.0, busy_w=4.0, radio_w=1.0)
    # 0.1 s computing at 4 W; 0.05 s on the link at 2 W idle, of which
    # 8 * 25_000 bits / 10 Mbit/s = 0.02 s is airtime at 1 W more.
    energy = task_energy(model, task_id=7, device="d", device_s=0.1,
                         transmission_s=0.05, cut_bytes=25_000,
                         rate_bps=10e6)  # fmt: skip
    assert energy.compute_j == pytest.approx(0.4)
    assert energy.link_j == pytest.approx(0.05 * 2.0 + 0.02 * 1.0)
    assert energy.total_j == pytest.approx(0.52)
    # Airtime never exceeds the time on the link; an unknown rate counts it all.
    slow = task_energy(model, task_id=7, device="d", device_s=0.0,
                       transmission_s=0.01, cut_bytes=10**6, rate_bps=1e6)  # fmt: skip
    assert slow.link_j == pytest.approx(0.01 * 3.0)
    unknown = task_energy(model, task_id=7, device="d", device_s=0.0,
                          transmission_s=0.01, cut_bytes=1, rate_bps=None)  # fmt: skip
    assert unknown.link_j == pytest.approx(0.03)


_SCENARIO = """
name: e
devices:
- {name: pi, class: rpi4, link: {latency_ms: 5, rate_mbps: 8}}
- {name: free, cpu_share: 0.5, link: {latency_ms: 5, rate_mbps: 8}}
"""


def _task(task_id: int, device: str, device_s: float) -> TaskRecord:
    return TaskRecord(
        task_id=task_id, device=device, idx=task_id, sample=0, label=0, cut=3,
        arrival_s=0.0, device_wait_s=0.0, device_s=device_s,
        transmission_s=0.02, bs_wait_s=0.0, bs_s=0.01,
        delay_s=device_s + 0.03, cut_bytes=10_000, prediction=0,
        logits=b"\x00" * 4, completed_at=1.0,
    )  # fmt: skip


def test_run_energy_is_derived_from_the_store(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_id = store.create_run(name="e", scenario_yaml=_SCENARIO,
                                  scenario_hash="h", seed=1, algorithm="greedy",
                                  scheduler="fcfs", environment={})  # fmt: skip
        link = {"rate_mbps": 8.0}
        for name in ("pi", "free"):
            node = NodeRecord(name, "device", 1, 0.1, None, "sigstop", (), link)
            store.record_node(run_id, node)
        store.record_task(run_id, _task(0, "pi", 0.1))
        store.record_task(run_id, _task(1, "pi", 0.3))
        store.record_task(run_id, _task(2, "free", 0.3))
        energies = run_energy(store, run_id)
        summary = summarise(store, run_id)

    rpi4 = POWER_MODELS["rpi4"]
    # 10 kB at 8 Mbit/s is 0.01 s of airtime within 0.02 s on the link.
    link_j = 0.02 * rpi4.idle_w + 0.01 * rpi4.radio_w
    assert [e.task_id for e in energies] == [0, 1]
    assert energies[0].total_j == pytest.approx(0.1 * rpi4.busy_w + link_j)
    assert energies[1].total_j == pytest.approx(0.3 * rpi4.busy_w + link_j)
    assert mean_by_device(energies) == {"pi": pytest.approx(0.2 * rpi4.busy_w + link_j)}
    assert dict(summary.energy_per_task_j) == dict(mean_by_device(energies))


def _chip(root: Path, index: int, files: dict[str, str]) -> Path:
    folder = root / f"hwmon{index}"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text + "\n")
    return folder


def test_hwmon_meter_reads_the_sysfs_format(tmp_path: Path) -> None:
    _chip(tmp_path, 0, {"name": "k10temp", "temp1_input": "41000"})
    ina219 = _chip(tmp_path, 1, {"name": "ina219", "power1_input": "2750000",
                                 "curr1_input": "550", "in1_input": "5000",
                                 "in0_input": "27"})  # fmt: skip
    ina260 = _chip(tmp_path, 2, {"name": "ina260", "curr1_input": "1200",
                                 "in1_input": "5100"})  # fmt: skip

    reading = HwmonPowerMeter(ina219).read()
    assert reading.power_w == pytest.approx(2.75)
    assert reading.current_a == pytest.approx(0.55)
    assert reading.voltage_v == pytest.approx(5.0)
    # Without power1_input, power is current times bus voltage.
    assert HwmonPowerMeter(ina260).read().power_w == pytest.approx(1.2 * 5.1)

    assert find_hwmon("ina260", root=tmp_path) == ina260
    meter = load_meter("hwmon:ina219", root=tmp_path)
    assert isinstance(meter, HwmonPowerMeter) and meter.chip == "ina219"
    by_path = load_meter(f"hwmon:{ina260}")
    assert isinstance(by_path, HwmonPowerMeter) and by_path.path == ina260

    (ina219 / "power1_input").write_text("3000000\n")
    assert HwmonPowerMeter(ina219).read().power_w == pytest.approx(3.0)


def test_hwmon_errors_name_what_is_missing(tmp_path: Path) -> None:
    thermal = _chip(tmp_path, 0, {"name": "k10temp", "temp1_input": "41000"})
    with pytest.raises(TestbedError, match="not a power monitor"):
        HwmonPowerMeter(thermal)
    with pytest.raises(TestbedError, match=r"no hwmon device named 'ina219'.*"
                       r"hwmon0=k10temp"):  # fmt: skip
        find_hwmon("ina219", root=tmp_path)
    broken = _chip(tmp_path, 1, {"name": "ina219", "power1_input": "n/a"})
    with pytest.raises(TestbedError, match="not an integer"):
        HwmonPowerMeter(broken).read()
    with pytest.raises(ConfigError, match="unknown power meter 'joulescope'"):
        load_meter("joulescope")


def test_energy_of_readings_by_trapezoid() -> None:
    readings = [PowerReading(0.0, 2.0), PowerReading(1.0, 4.0),
                PowerReading(3.0, 4.0)]  # fmt: skip
    assert energy_j(readings) == pytest.approx(3.0 + 8.0)
    assert energy_j(readings[:1]) == 0.0
