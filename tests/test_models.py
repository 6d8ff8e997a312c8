"""Every cut of every bundled model reproduces the whole model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from splitlab.errors import ConfigError
from splitlab.graph import staged_state_dict
from splitlab.models import MODELS, build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: faster and steadier than two on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_cut_matches_the_whole_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = (
        model.example_input()
        if MODELS[name].dataset
        else torch.randn(1 if name == "resnet56" else 2, *model.input_shape)
    )
    with torch.inference_mode():
        whole = model(x)
        for cut in range(model.num_stages + 1):
            head = model.run(x, 0, cut)
            tail = model.run(head, cut, model.num_stages)
            torch.testing.assert_close(tail, whole, rtol=1e-5, atol=1e-6)


def test_alexnet_has_the_eleven_named_stages_and_36m_parameters() -> None:
    model = build_model("alexnet")
    assert model.stage_names == (
        "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5",
        "pool3", "fc1", "fc2", "fc3",
    )  # fmt: skip
    parameters = sum(p.numel() for p in model.parameters())
    assert 35_000_000 < parameters < 37_000_000


def test_cut_bytes_shrink_through_the_pools() -> None:
    model = build_model("alexnet").eval()
    x = torch.randn(1, 3, 32, 32)
    sizes = []
    with torch.inference_mode():
        for cut in range(1, model.num_stages + 1):
            sizes.append(model.run(x, 0, cut).numel() * 4)
    # conv1 emits 64x32x32 floats; pool3 flattens 256x4x4; fc3 emits 10 logits.
    assert sizes[0] == 64 * 32 * 32 * 4
    assert sizes[7] == 256 * 4 * 4 * 4
    assert sizes[-1] == 10 * 4


def test_out_of_range_cut_and_unknown_model_are_refused() -> None:
    model = build_model("alexnet-small")
    with pytest.raises(ConfigError, match="cut 12 is outside 0..11"):
        model.run(torch.zeros(1, 3, 32, 32), 0, 12)
    with pytest.raises(ConfigError, match="unknown model 'vgg99'; known models"):
        build_model("vgg99")


def test_zoo_stages_follow_the_module_units() -> None:
    # Stem conv1, bn1, relu; one stage per residual block; then the head.
    blocks = tuple(f"layer{layer}.{block}" for layer in (1, 2, 3) for block in range(3))
    assert build_model("resnet20").stage_names == (
        "conv1", "bn1", "relu", *blocks, "adaptive_avg_pool2d", "flatten", "linear",
    )  # fmt: skip
    assert build_model("cnn-small").stage_names == (
        "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "flatten", "fc",
    )  # fmt: skip
    assert build_model("mobilenetv2").stage_names == (
        "stem", *(f"blocks.{index}" for index in range(17)),
        "last", "pool", "flatten", "fc",
    )  # fmt: skip
    # 9 conv units + 4 pools + flatten + 2 linear; 8 + 5 + 1 + 1; 27 blocks + 6.
    counts = {"cnn-deep": 16, "vgg11": 15, "resnet56": 33, "mlp": 4}
    assert {name: build_model(name).num_stages for name in counts} == counts


def test_zoo_parameter_counts_match_the_designs() -> None:
    def parameters(name: str) -> int:
        return sum(p.numel() for p in build_model(name).parameters())

    # cnn-small: convs 3*16*9+16 + 16*32*9+32 + 32*64*9+64, fc 1024*10+10.
    assert parameters("cnn-small") == 448 + 4_640 + 18_496 + 10_250
    # mlp: 3072*512+512 + 512*256+256 + 256*10+10.
    assert parameters("mlp") == 1_573_376 + 131_328 + 2_570
    # resnet20: stem 432+32; layer1 6*(2304+32); layer2 4608+64 + 5*(9216+64);
    # layer3 18432+128 + 5*(36864+128); linear 640+10.
    assert parameters("resnet20") == 464 + 14_016 + 51_072 + 203_520 + 650
    # resnet56: the same with 9 blocks a stage.
    assert parameters("resnet56") == 464 + 42_048 + 162_432 + 647_424 + 650


def test_resnet_loads_a_checkpoint_by_its_published_names() -> None:
    info = MODELS["resnet20"]
    assert info.module is not None
    torch.manual_seed(3)
    source = info.module(10).eval()
    convs = [
        f"layer{layer}.{block}.{conv}"
        for layer in (1, 2, 3)
        for block in range(3)
        for conv in ("conv1", "bn1", "conv2", "bn2")
    ]
    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {"conv1.weight", "linear.weight", "linear.bias"}
    expected |= {f"bn1.{field}" for field in bn_fields}
    for name in convs:
        if ".conv" in name:
            expected.add(f"{name}.weight")
        else:
            expected |= {f"{name}.{field}" for field in bn_fields}
    assert set(source.state_dict()) == expected

    model = build_model("resnet20").eval()
    state = staged_state_dict(model, source.state_dict())
    assert "stages.3.layer1.0.conv1.weight" in state
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"1 missing \(linear.bias\), 0 unexpected"):
        staged_state_dict(
            model, {k: v for k, v in source.state_dict().items() if k != "linear.bias"}
        )


def test_alexnet_parameter_names_are_unchanged() -> None:
    # Cached weights are keyed by these names.
    names = list(build_model("alexnet-small").state_dict())
    assert names[:4] == [
        "stages.0.0.weight", "stages.0.0.bias", "stages.2.0.weight", "stages.2.0.bias",
    ]  # fmt: skip
    assert names[-2:] == ["stages.10.weight", "stages.10.bias"]
    assert len(names) == 16


USER_MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x + torch.relu(self.inner(x))
        return self.head(torch.flatten(self.pool(x), 1))


def tiny(classes):
    return Tiny(classes)


def flat():
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))


def broken(classes):
    raise RuntimeError("no weights here")
"""


def test_a_user_model_file_becomes_a_staged_model(tmp_path: Path) -> None:
    source = tmp_path / "mine.py"
    source.write_text(USER_MODEL)
    model = build_model(f"{source}:tiny", classes=7).eval()
    # The residual add keeps "inner" inside one stage with the add after it.
    assert model.stage_names[0] == "conv"
    assert "inner" not in model.stage_names
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        whole = model(x)
        assert whole.shape == (2, 7)
        for cut in range(model.num_stages + 1):
            tail = model.run(model.run(x, 0, cut), cut, model.num_stages)
            torch.testing.assert_close(tail, whole)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("missing.py:tiny", "model file missing.py does not exist"),
        ("{dir}/mine.py:nothing", "has no callable 'nothing'"),
        ("{dir}/mine.py:broken", "raised RuntimeError: no weights here"),
        ("{dir}/mine.py:flat", "failed on an example input of shape [1, 3, 32, 32]"),
    ],
)
def test_user_model_mistakes_are_named(
    tmp_path: Path, reference: str, message: str
) -> None:
    (tmp_path / "mine.py").write_text(USER_MODEL)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_model(reference.format(dir=tmp_path))
