"""Every cut of every bundled model reproduces the whole model."""

from __future__ import annotations

import pytest
import torch

from splitlab.errors import ConfigError
from splitlab.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_cut_matches_the_whole_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(2, *model.input_shape)
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
