"""The model registry: models as chains of stages that can be cut anywhere.

A :class:`StagedModel` is a sequence of named stages, each a module with one
tensor in and one tensor out.  Cut ``k`` runs stages ``1..k`` on the device and
``k+1..L`` on the base station; :meth:`StagedModel.run` executes any
contiguous range of stages, so a head and a tail are the same weights as the
whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from splitlab.errors import ConfigError


class StagedModel(nn.Module):
    """A model made of named stages executed one after another.

    Parameters
    ----------
    name:
        The registry name of the model.
    stages:
        ``(name, module)`` pairs in execution order.
    input_shape:
        Shape of one input sample, without the batch dimension.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[tuple[str, nn.Module]],
        *,
        input_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError(f"model {name!r} has no stages")
        self.model_name = name
        self.input_shape = input_shape
        self.stage_names = tuple(stage_name for stage_name, _ in stages)
        self.stages = nn.ModuleList(module for _, module in stages)

    @property
    def num_stages(self) -> int:
        """``L``, the number of stages."""
        return len(self.stages)

    def check_cut(self, cut: int) -> None:
        """Raise :class:`ConfigError` unless ``0 <= cut <= L``."""
        if not 0 <= cut <= self.num_stages:
            raise ConfigError(
                f"cut {cut} is outside 0..{self.num_stages} for model "
                f"{self.model_name!r}"
            )

    def run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start+1..stop`` (the tail of cut ``start`` up to ``stop``).

        ``run(x, 0, k)`` is the head of cut ``k`` and ``run(h, k, L)`` its tail.
        """
        self.check_cut(start)
        self.check_cut(stop)
        if start > stop:
            raise ValueError(f"start {start} is after stop {stop}")
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the whole model."""
        return self.run(x, 0, self.num_stages)

    def named_stages(self) -> Iterator[tuple[str, nn.Module]]:
        """Yield ``(name, module)`` for every stage in order."""
        yield from zip(self.stage_names, self.stages, strict=True)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A registry entry.

    Attributes
    ----------
    name:
        The name scenarios and the CLI use.
    description:
        One line for listings.
    build:
        Builds the model with freshly initialised weights.
    """

    name: str
    description: str
    build: Callable[[int], StagedModel]


def _conv(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


def _dense(in_features: int, out_features: int) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(p=0.5),
        nn.Linear(in_features, out_features),
        nn.ReLU(inplace=True),
    )


def _cnn(
    name: str, widths: tuple[int, int, int, int, int], hidden: int, classes: int
) -> StagedModel:
    """An AlexNet-shaped network for 32x32x3 inputs: 5 convs, 3 pools, 3 FCs."""
    c1, c2, c3, c4, c5 = widths
    stages: list[tuple[str, nn.Module]] = [
        ("conv1", _conv(3, c1)),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", _conv(c1, c2)),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", _conv(c2, c3)),
        ("conv4", _conv(c3, c4)),
        ("conv5", _conv(c4, c5)),
        ("pool3", nn.Sequential(nn.MaxPool2d(2), nn.Flatten())),
        ("fc1", _dense(c5 * 4 * 4, hidden)),
        ("fc2", _dense(hidden, hidden)),
        ("fc3", nn.Linear(hidden, classes)),
    ]
    return StagedModel(name, stages, input_shape=(3, 32, 32))


def build_alexnet(classes: int = 10) -> StagedModel:
    """AlexNet for 32x32x3 inputs as 11 stages (about 36M parameters)."""
    return _cnn("alexnet", (64, 192, 384, 256, 256), 4096, classes)


def build_alexnet_small(classes: int = 10) -> StagedModel:
    """A narrower AlexNet (same 11 stages, about 0.9M parameters)."""
    return _cnn("alexnet-small", (16, 48, 96, 64, 64), 512, classes)


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "alexnet",
            "AlexNet for 32x32x3 images, 11 stages, 36M parameters",
            build_alexnet,
        ),
        ModelInfo(
            "alexnet-small",
            "narrow AlexNet for 32x32x3 images, 11 stages, 0.9M parameters",
            build_alexnet_small,
        ),
    )
}


def build_model(name: str, *, classes: int = 10) -> StagedModel:
    """Build a registered model with fresh weights.

    Raises
    ------
    ConfigError
        If ``name`` is not registered.
    """
    try:
        info = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None
    return info.build(classes)
