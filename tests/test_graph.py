"""Cut points found in traced graphs: every valid cut splits a model exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from splitlab.errors import ConfigError
from splitlab.graph import (
    ModelGraph,
    split_module,
    staged_from_module,
    valid_cuts,
)
from splitlab.models import MODELS, build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: faster and steadier than two on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Text models take token ids and are staged by hand, not traced from images.
@pytest.mark.parametrize(
    "name", sorted(name for name, info in MODELS.items() if info.dataset is None)
)
def test_every_valid_cut_of_every_model_matches_the_whole_model(name: str) -> None:
    # A graph-derived model is analysed as the plain module it is cut from; a
    # hand-staged one (AlexNet) is itself traced, stages and all.
    torch.manual_seed(0)
    info = MODELS[name]
    model = (info.module(10) if info.module else info.build(10)).eval()
    x = torch.randn(1 if name == "resnet56" else 2, 3, 32, 32)
    graph = ModelGraph(model, x, name=name)
    with torch.inference_mode():
        whole = model(x)
        for cut in graph.cuts:
            head, tail = graph.split(cut.after)
            middle = head(x)
            assert tuple(middle.shape) == cut.shape
            assert middle.numel() * middle.element_size() == cut.tensor_bytes
            torch.testing.assert_close(tail(middle), whole, rtol=1e-5, atol=1e-6)
    # The registry's stage boundaries are some of these cuts.
    assert len(graph.cuts) >= build_model(name).num_stages + 1


def test_resnet_cuts_inside_a_residual_block_are_refused() -> None:
    info = MODELS["resnet20"]
    assert info.module is not None
    graph = ModelGraph(info.module(10).eval(), torch.zeros(1, 3, 32, 32))
    # The stem can be cut after the input, conv1, bn1 and relu; a block only
    # after its add and after its final relu; the head anywhere.
    blocks = [f"layer{layer}.{block}" for layer in (1, 2, 3) for block in range(3)]
    assert [cut.after for cut in graph.cuts] == [
        "x", "conv1", "bn1", "relu",
        *(f"{block}.{op}" for block in blocks for op in ("add", "relu_1")),
        "adaptive_avg_pool2d", "flatten", "linear",
    ]  # fmt: skip

    # Inside layer1.0 the block's input (the stem's relu) is still needed.
    with pytest.raises(
        ConfigError,
        match=r"^cut after layer1\.0\.conv1 is inside a residual block: 2 tensors "
        r"cross it \(relu \[1, 16, 32, 32\], layer1\.0\.conv1 \[1, 16, 32, 32\]\); "
        r"nearest valid cuts: after relu or after layer1\.0\.add$",
    ):
        graph.split("layer1.0.conv1")
    # In the downsampling block the shortcut carries 16 subsampled channels
    # beside the 32-channel main path.
    with pytest.raises(
        ConfigError,
        match=r"2 tensors cross it \(layer2\.0\.bn2 \[1, 32, 16, 16\], "
        r"layer2\.0\.shortcut\.getitem \[1, 16, 16, 16\]\)",
    ):
        graph.split("layer2.0.shortcut.getitem")
    with pytest.raises(ConfigError, match="no operation named 'layer9'"):
        graph.split("layer9")


class Skip(nn.Module):
    """A small network with one skip connection and a shape read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.mix = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        z = self.mix(y) + y
        return self.head(z.view(z.size(0), -1))


def test_a_user_module_with_a_skip_connection_gets_the_right_cuts() -> None:
    # Operations in order: conv(1) relu(2) mix(3) add(4) size(5) view(6)
    # head(7).  What is made before each position and used after it:
    #   0 {x}          valid       4 {add}         valid
    #   1 {conv}       valid       5 {add, size}   two values: invalid
    #   2 {relu}       valid       6 {view}        valid
    #   3 {relu, mix}  y skips over mix: invalid   7 {head} valid (the output)
    torch.manual_seed(1)
    module = Skip().eval()
    x = torch.randn(2, 3, 8, 8)
    assert ModelGraph(module, x).operations == (
        "conv", "relu", "mix", "add", "size", "view", "head",
    )  # fmt: skip
    cuts = valid_cuts(module, x)
    assert [(cut.index, cut.after) for cut in cuts] == [
        (0, "x"), (1, "conv"), (2, "relu"), (4, "add"), (6, "view"), (7, "head"),
    ]  # fmt: skip
    assert [cut.shape for cut in cuts] == [
        (2, 3, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8), (2, 256), (2, 5),
    ]  # fmt: skip
    assert cuts[4].tensor_bytes == 2 * 256 * 4

    with pytest.raises(
        ConfigError,
        match=r"cut after mix is inside a residual block: 2 tensors cross it "
        r"\(relu \[2, 4, 8, 8\], mix \[2, 4, 8, 8\]\); nearest valid cuts: "
        r"after relu or after add",
    ):
        split_module(module, x, after="mix")
    with pytest.raises(ConfigError, match=r"2 values cross it \(add \[2, 4, 8, 8\], "
                       r"size \(int\)\)"):  # fmt: skip
        split_module(module, x, after="size")

    head, tail = split_module(module, x, after="add")
    with torch.inference_mode():
        torch.testing.assert_close(tail(head(x)), module(x), rtol=0, atol=0)

    # Stages: each leaf module is a unit; mix cannot be cut from the add that
    # follows, nor size from view.
    staged = staged_from_module("skip", module, input_shape=(3, 8, 8)).eval()
    assert staged.stage_names == ("conv", "relu", "mix+add", "size+view", "head")
    with torch.inference_mode():
        torch.testing.assert_close(staged(x), module(x), rtol=0, atol=0)
        assert staged.run(x, 0, 3).shape == (2, 4, 8, 8)


def test_analysis_leaves_a_training_module_untouched() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    valid_cuts(module, torch.randn(2, 3, 8, 8) + 5.0)
    assert module.training and module[1].training
    # Batch norm ran in eval mode, so its running statistics did not move.
    assert torch.equal(module[1].running_mean, torch.zeros(4))
    assert int(module[1].num_batches_tracked) == 0


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, -x


def test_modules_that_cannot_be_partitioned_are_refused() -> None:
    x = torch.zeros(1, 3)
    with pytest.raises(
        ConfigError,
        match=r"model 'mine' \(DataDependent\) cannot be traced by torch\.fx: "
        r".*symbolically traced variables cannot be used as inputs to control flow",
    ):
        staged_from_module("mine", DataDependent(), input_shape=(3,))
    with pytest.raises(ConfigError, match=r"takes 2 inputs \(x, y\)"):
        valid_cuts(TwoInputs(), x)
    with pytest.raises(ConfigError, match="returns tuple; a partitionable model"):
        valid_cuts(TwoOutputs(), x)
