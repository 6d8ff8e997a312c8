"""Scenario files: the bundled default loads, mistakes are named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlab.errors import ConfigError
from splitlab.scenario import load_scenario, parse_scenario


def _base() -> dict[str, object]:
    return {
        "name": "t",
        "devices": [
            {"name": "d1", "class": "rpi4", "link": {"latency_ms": 5, "rate_mbps": 10}}
        ],
    }


def test_the_bundled_default_has_four_different_links() -> None:
    scenario = load_scenario()
    assert scenario.name == "default"
    assert scenario.model == "alexnet"
    assert len(scenario.devices) == 4
    links = [device.link for device in scenario.devices]
    assert sorted(link.latency_ms for link in links) == [5, 20, 50, 100]
    assert sorted(link.rate_mbps for link in links) == [5, 10, 20, 50]
    assert scenario.workload.tasks_per_device == 20
    assert all(device.device_class == "rpi4" for device in scenario.devices)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    scenario = load_scenario()
    path = tmp_path / "s.yaml"
    path.write_text(scenario.to_yaml())
    assert load_scenario(path) == scenario
    assert load_scenario(path).fingerprint() == scenario.fingerprint()


def test_link_spec_is_in_si_units() -> None:
    spec = parse_scenario(_base(), source="x").devices[0].link.spec()
    assert spec.latency_s == pytest.approx(0.005)
    assert spec.rate_bps == pytest.approx(10e6)
    # 10 kB at 10 Mbit/s: 8 ms on the wire plus 5 ms of latency.
    assert spec.transfer_s(10_000) == pytest.approx(0.013)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update(colour="red"),
            "s.yaml: colour: unknown key (got 'red')",
        ),
        (
            lambda s: s["devices"][0]["link"].update(latency_ms=-5),
            "s.yaml: devices[0].link.latency_ms: Input should be greater than or "
            "equal to 0 (got -5)",
        ),
        (
            lambda s: s["devices"][0]["link"].update(rate_mbps=0),
            "s.yaml: devices[0].link.rate_mbps: Input should be greater than or equal "
            "to 0.001 (got 0)",
        ),
        (
            lambda s: s.update(model="resnet9000"),
            "unknown model 'resnet9000'; known: alexnet, alexnet-small",
        ),
        (
            lambda s: s.update(algorithm="magic"),
            "unknown algorithm 'magic'; known: ",
        ),
        (
            lambda s: s.update(scheduler="lifo"),
            "unknown scheduler 'lifo'; known: ",
        ),
        (
            lambda s: s["devices"].append(dict(s["devices"][0])),
            "device name 'd1' is used twice",
        ),
        (
            lambda s: s.update(data={"dataset": "cifar10"}),
            "dataset cifar10 needs 'dir'",
        ),
        (
            lambda s: s["devices"][0].update(**{"class": "cray"}),
            "devices[0].class: Input should be 'rpi4', 'rpi3', 'jetson-nano' or "
            "'laptop' (got 'cray')",
        ),
        (
            lambda s: s.update(workload={"tasks_per_device": 0}),
            "workload.tasks_per_device: Input should be greater than or equal to 1",
        ),
        (lambda s: s.pop("devices"), "s.yaml: devices: Field required"),
        (
            lambda s: s.update(model="resnet9000"),
            "s.yaml: model: unknown model 'resnet9000'",
        ),
        (
            lambda s: s.update(scheduler="lifo"),
            "s.yaml: scheduler: unknown scheduler 'lifo'",
        ),
        (
            lambda s: s.update(workload={"tasks_per_device": True}),
            "workload.tasks_per_device: Input should be a valid integer (got True)",
        ),
        (
            lambda s: s["devices"][0]["link"].update(latency_ms=float("inf")),
            "devices[0].link.latency_ms: Input should be a finite number",
        ),
        (
            lambda s: s["devices"][0]["link"].update(latency_ms=1e12),
            "devices[0].link.latency_ms: Input should be less than or equal to 60000",
        ),
        (lambda s: s.update(seed=-1), "seed: Input should be greater than or equal"),
        (
            lambda s: s["devices"][0].update(link={"latncy_ms": 5, "rate_mbps": 1}),
            "devices[0].link.latncy_ms: unknown key (got 5) (and 1 more problem)",
        ),
        (
            lambda s: s["devices"].append(dict(s["devices"][0])),
            "devices: device name 'd1' is used twice (got [{",
        ),
    ],
)
def test_mistakes_are_named(tmp_path: Path, change: object, message: str) -> None:
    data = _base()
    change(data)  # type: ignore[operator]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert message in str(caught.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scenario .*missing.yaml"):
        load_scenario(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_scenario(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a scenario must be a mapping"):
        load_scenario(listed)


def test_overrides_are_validated() -> None:
    scenario = load_scenario()
    changed = scenario.with_overrides(
        algorithm="offload-all", **{"workload.tasks_per_device": 3}
    )
    assert changed.algorithm == "offload-all"
    assert changed.workload.tasks_per_device == 3
    with pytest.raises(ConfigError, match="command line: .*tasks_per_device"):
        scenario.with_overrides(**{"workload.tasks_per_device": -1})


def test_the_objective_is_validated_and_round_trips() -> None:
    scenario = load_scenario()
    assert scenario.objective == "total"
    fair = scenario.with_overrides(objective="variance")
    assert fair.objective == "variance"
    again = parse_scenario(yaml.safe_load(fair.to_yaml()), source="yaml")
    assert again.objective == "variance"
    with pytest.raises(ConfigError, match="objective.*'fastest'"):
        scenario.with_overrides(objective="fastest")


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    path=st.lists(st.sampled_from(["devices", 0, 1, "link", "workload", "data",
                                   "latency_ms", "rate_mbps", "name", "class",
                                   "tasks_per_device", "seed", "model"]),
                  min_size=1, max_size=4),
    value=_values,
)  # fmt: skip
def test_any_mutation_of_a_scenario_is_accepted_or_named(
    path: list[object], value: object
) -> None:
    data = yaml.safe_load(load_scenario().to_yaml())
    target = data
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            return
    try:
        target[path[-1]] = value
    except (TypeError, IndexError):
        return
    try:
        parse_scenario(data, source="fuzz")
    except ConfigError as error:
        assert str(error).startswith("fuzz")
        assert "\n" not in str(error)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_is_a_scenario_or_a_clear_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text)
        try:
            load_scenario(path)
        except ConfigError as error:
            assert "fuzz.yaml" in str(error)


def _board(name: str, host: str) -> dict[str, object]:
    return {
        "name": name,
        "class": "rpi4",
        "link": {"latency_ms": 5, "rate_mbps": 10},
        "ssh": {"host": host, "user": "pi", "key": "~/.ssh/id_ed25519"},
    }


def test_boards_check_host_keys_by_default() -> None:
    scenario = parse_scenario(
        {"name": "b", "backend": "ssh", "devices": [_board("pi1", "10.0.0.2")],
         "base_station": {"address": "10.0.0.1"}},
        source="test",
    )  # fmt: skip
    ssh = scenario.devices[0].ssh
    assert ssh is not None
    assert ssh.host_key_check is True
    assert ssh.port == 22
    assert ssh.known_hosts == Path("~/.ssh/known_hosts")
    assert (ssh.python, ssh.workdir) == ("python3", "~/.splitlab")
    assert str(scenario.base_station.address) == "10.0.0.1"
    again = parse_scenario(yaml.safe_load(scenario.to_yaml()), source="again")
    assert again == scenario


@pytest.mark.parametrize(
    ("devices", "extra", "message"),
    [
        ([_board("pi1", "a"), {"name": "pi2", "class": "rpi4",
          "link": {"latency_ms": 1, "rate_mbps": 1}}], {},
         r"devices\[1\]\.ssh .* 'pi2'"),
        ([_board("pi1", "a"), _board("pi2", "a")], {},
         "'pi1' and 'pi2' name the same board a:22"),
        ([_board("pi1", "a")], {"base_station": {"address": "bs.lan"}},
         r"base_station\.address"),
    ],
)  # fmt: skip
def test_board_mistakes_are_named(
    devices: list[object], extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_scenario(
            {"name": "b", "backend": "ssh", "devices": devices, **extra},
            source="test",
        )
