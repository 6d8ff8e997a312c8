"""A user model's own weights: loaded instead of training, or refused clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from splitlab.errors import ConfigError
from splitlab.experiment import prepare_weights
from splitlab.scenario import parse_scenario
from splitlab.weights import load_trained, read_state_dict

SOURCE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(4))
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.norm(self.features(x)), 1))


def net(classes):
    return Net(classes)


def wide(classes):
    model = Net(classes)
    model.head = nn.Linear(4 * 8 * 8, classes + 1)
    return model


def broken(classes):
    raise ValueError("the factory is broken on purpose")


def flat(classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(100, classes))
"""


def _module(tmp_path: Path) -> nn.Module:
    namespace: dict[str, Any] = {}
    exec(compile(SOURCE, "user", "exec"), namespace)
    torch.manual_seed(5)
    module: nn.Module = namespace["Net"](10)
    # Statistics that are not the defaults, so a lost buffer would show.
    module.norm.running_mean.uniform_(-1, 1)
    module.norm.running_var.uniform_(0.5, 2)
    return module.eval()


def _scenario_data(tmp_path: Path, factory: str, weights: Path) -> dict[str, Any]:
    source = tmp_path / "user.py"
    source.write_text(SOURCE)
    return {
        "name": "mine",
        "seed": 3,
        "model": f"{source}:{factory}",
        "weights": str(weights),
        "workload": {"tasks_per_device": 2},
        "devices": [
            {"name": "d1", "cpu_share": 0.5, "link": {"latency_ms": 1, "rate_mbps": 50}}
        ],
    }


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_user_weights_are_used_instead_of_training(tmp_path: Path, suffix: str) -> None:
    module = _module(tmp_path)
    weights = tmp_path / f"net{suffix}"
    if suffix == ".pt":
        torch.save(module.state_dict(), weights)
    else:
        save_file(module.state_dict(), str(weights))
    scenario = parse_scenario(_scenario_data(tmp_path, "net", weights), source="t")

    prepared = prepare_weights(scenario)
    assert not prepared.trained_now
    assert 0.0 <= prepared.test_accuracy <= 1.0
    staged = load_trained(scenario.model, prepared.path, classes=10)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(staged(x), module(x))


def test_a_wrapped_data_parallel_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    state = _module(tmp_path).state_dict()
    weights = tmp_path / "checkpoint.th"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               weights)  # fmt: skip
    loaded = read_state_dict(weights)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_weights_need_a_user_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weights are for a user model"):
        parse_scenario(
            {**_scenario_data(tmp_path, "net", tmp_path / "w.pt"), "model": "mlp"},
            source="t",
        )


class _Planted:
    """Unpickling this would create a folder: code run by loading weights."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.mkdir, (self.marker,))


def test_a_pickled_object_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "planted"
    weights = tmp_path / "evil.pt"
    torch.save({"head.weight": torch.zeros(1), "x": _Planted(marker)}, weights)
    with pytest.raises(ConfigError, match=r"weights: .*evil\.pt is not a plain"):
        read_state_dict(weights)
    assert not marker.exists()
    # A pickled module is refused the same way.
    torch.save(nn.Linear(2, 2), weights)
    with pytest.raises(ConfigError, match="is not a plain state dict"):
        read_state_dict(weights)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], weights)
    with pytest.raises(ConfigError, match="holds a list, not a mapping"):
        read_state_dict(weights)


def _plan(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "plan", str(path),
         "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _wrong_keys(tmp_path: Path) -> Path:
    state = _module(tmp_path).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    return path


def _good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    torch.save(_module(tmp_path).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("factory", "make_weights", "expected"),
    [
        ("net", lambda tmp: tmp / "absent.pt", "absent.pt does not exist"),
        ("broken", _good, "raised ValueError: the factory is broken on purpose"),
        ("flat", _good, "example input of shape [1, 3, 32, 32]"),
        ("net", _wrong_keys, "1 missing (head.bias), 1 unexpected (extra.weight)"),
        ("wide", _good, "head.weight [10, 256] (model [11, 256])"),
    ],
    ids=["missing-file", "factory-raises", "wrong-input", "wrong-keys", "wrong-shapes"],
)
def test_mistakes_are_input_errors_naming_field_path_and_cause(
    tmp_path: Path, factory: str, make_weights: Any, expected: str
) -> None:
    weights = make_weights(tmp_path)
    scenario = parse_scenario(_scenario_data(tmp_path, factory, weights), source="t")
    with pytest.raises(ConfigError) as caught:
        prepare_weights(scenario)
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert expected in message, message
    if factory in ("net", "wide"):
        assert message.startswith("weights: ") and weights.name in message
    else:
        assert "user.py" in message


def test_the_command_line_exits_3_with_one_line(tmp_path: Path) -> None:
    result = _plan(tmp_path, _scenario_data(tmp_path, "wide", _good(tmp_path)))
    assert result.returncode == 3, result.stderr
    assert "weights: " in result.stderr and "good.pt" in result.stderr
    assert "head.weight [10, 256] (model [11, 256])" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
