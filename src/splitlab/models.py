"""The model registry: models as chains of stages that can be cut anywhere.

A :class:`StagedModel` is a sequence of named stages, each a module with one
tensor in and one tensor out.  Cut ``k`` runs stages ``1..k`` on the device and
``k+1..L`` on the base station; :meth:`StagedModel.run` executes any
contiguous range of stages, so a head and a tail are the same weights as the
whole model.

The two AlexNets are written as stages by hand; the rest of :data:`MODELS`
are plain modules cut into stages by :mod:`splitlab.graph` (see
``docs/models.md``).
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from splitlab.errors import ConfigError
from splitlab.usercode import import_file, is_onnx_file, is_reference


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

    Attributes
    ----------
    output_kind:
        ``"logits"`` for a classifier (verified by equal logits and class),
        ``"embedding"`` for an encoder (verified by cosine similarity).
    """

    output_kind = "logits"

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

    # Whether the output of one sample is one score per class of the data;
    # a model that is not a classifier is verified but reports no accuracy.
    classifies = True

    def stage_param_bytes(self, index: int) -> int:
        """Bytes of the weights of stage ``index`` (counted from 0)."""
        return sum(
            p.numel() * p.element_size() for p in self.stages[index].parameters()
        )

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
        # Indexing, not slicing: a slice of a ModuleList builds a new one on
        # every call, which costs as much as a small stage.
        for index in range(start, stop):
            x = self.stages[index](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the whole model."""
        return self.run(x, 0, self.num_stages)

    def prepare(self, start: int, stop: int) -> None:
        """Get ready to run stages ``start+1..stop``, before any task is timed.

        Torch stages are always ready; a model that builds a runtime session
        per range of stages (ONNX) builds it here.
        """
        self.check_cut(start)
        self.check_cut(stop)

    def named_stages(self) -> Iterator[tuple[str, nn.Module]]:
        """Yield ``(name, module)`` for every stage in order."""
        yield from zip(self.stage_names, self.stages, strict=True)

    def example_input(self) -> torch.Tensor:
        """A batch of one input to profile with: random values of ``input_shape``."""
        return torch.randn(1, *self.input_shape)


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
    module:
        For a model cut by :mod:`splitlab.graph`: builds the plain
        ``nn.Module`` it is cut from (the same parameter names, without the
        ``stages.{i}.`` prefix).  ``None`` for a model built as stages by hand.
    pretrained:
        For a model with published weights: returns them under the staged
        model's parameter names, so splitlab never trains it.  ``None`` for
        a model splitlab trains.
    dataset:
        The one data set the model takes (``sentences`` for a text model,
        ``prompts`` for a decoder that only ``splitlab generate`` runs);
        ``None`` for an image model, which takes any image data set.
    """

    name: str
    description: str
    build: Callable[[int], StagedModel]
    module: Callable[[int], nn.Module] | None = None
    pretrained: Callable[[], dict[str, torch.Tensor]] | None = None
    dataset: str | None = None


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


# The zoo below is built from plain modules and cut by splitlab.graph, so its
# stages are the units of each module: a conv block, a residual block, a layer.

_CIFAR_INPUT = (3, 32, 32)


def _graph_model(
    name: str, description: str, module: Callable[[int], nn.Module]
) -> ModelInfo:
    """A registry entry whose stages are cut from ``module`` by splitlab.graph."""

    def build(classes: int) -> StagedModel:
        # splitlab.graph builds on StagedModel, so it is imported when used.
        from splitlab.graph import staged_from_module

        return staged_from_module(name, module(classes), input_shape=_CIFAR_INPUT)

    return ModelInfo(name, description, build, module)


class _ConvUnit(nn.Module):
    """Convolution, optional batch norm, ReLU: one stage of a plain CNN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        batch_norm: bool,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=not batch_norm,
        )
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(self.bn(self.conv(x)))


class _LinearUnit(nn.Module):
    """Dropout, linear layer, ReLU: one hidden layer of a classifier."""

    def __init__(self, in_features: int, out_features: int, *, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(self.linear(self.dropout(x)))


def _plain_cnn(
    widths: Sequence[int | str], hidden: int, classes: int, *, batch_norm: bool
) -> nn.Sequential:
    """Conv units (an int is a width) and 2x2 max pools (``"M"``), then a head.

    Each pool halves the 32x32 input; the head flattens and applies one hidden
    layer of ``hidden`` features (none when ``hidden == 0``) and the logits.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, side, convs, pools = 3, 32, 0, 0
    for width in widths:
        if isinstance(width, str):
            pools += 1
            side //= 2
            layers[f"pool{pools}"] = nn.MaxPool2d(2)
        else:
            convs += 1
            layers[f"conv{convs}"] = _ConvUnit(channels, width, batch_norm=batch_norm)
            channels = width
    layers["flatten"] = nn.Flatten()
    features = channels * side * side
    if hidden:
        layers["fc1"] = _LinearUnit(features, hidden, dropout=0.5)
        layers["fc2"] = nn.Linear(hidden, classes)
    else:
        layers["fc"] = nn.Linear(features, classes)
    return nn.Sequential(layers)


def _cnn_small(classes: int) -> nn.Module:
    """A small plain CNN: 3 conv units, 3 pools, one linear layer."""
    return _plain_cnn((16, "M", 32, "M", 64, "M"), 0, classes, batch_norm=False)


def _cnn_deep(classes: int) -> nn.Module:
    """A deeper plain CNN: 9 conv-bn-relu units, 4 pools, 2 linear layers."""
    widths: tuple[int | str, ...] = (
        32, 32, "M", 64, 64, "M", 128, 128, 128, "M", 256, 256, "M",
    )  # fmt: skip
    return _plain_cnn(widths, 256, classes, batch_norm=True)


def _vgg11(classes: int) -> nn.Module:
    """VGG-11 with batch norm for 32x32 inputs: 8 conv units, 5 pools, a linear."""
    widths: tuple[int | str, ...] = (
        64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
    )  # fmt: skip
    return _plain_cnn(widths, 0, classes, batch_norm=True)


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 linear projection.

    The input is added to the output when the block keeps the shape.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, expansion: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = (
            nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            )
            if expansion != 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(
                hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False
            ),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class _MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs.

    The stem and the first 24-channel block keep stride 1 (the ImageNet model
    uses 2 for both), so the last blocks still see 4x4 maps.
    """

    # (expansion, output channels, blocks, stride of the first block)
    SETTINGS = (
        (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )  # fmt: skip

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = _ConvUnit(3, 32, batch_norm=True)
        blocks: list[nn.Module] = []
        channels = 32
        for expansion, out_channels, count, stride in self.SETTINGS:
            for index in range(count):
                blocks.append(
                    _InvertedResidual(
                        channels,
                        out_channels,
                        stride=stride if index == 0 else 1,
                        expansion=expansion,
                    )
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.last = _ConvUnit(channels, 1280, batch_norm=True, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.last(self.blocks(self.stem(x)))
        logits: torch.Tensor = self.fc(self.flatten(self.pool(out)))
        return logits


class _PadShortcut(nn.Module):
    """ResNet's option-A shortcut: every second pixel, new channels zero.

    It has no parameters: the input is subsampled by 2 in both directions and
    zero channels are added on both sides to reach the block's width.
    """

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.extra_channels // 2
        after = self.extra_channels - before
        return functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, before, after))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers and an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _PadShortcut(planes - in_planes)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return functional.relu(out + self.shortcut(x))


class _CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016).

    A 16-channel stem, three stages of ``n`` basic blocks at 16, 32 and 64
    channels (the first block of stages 2 and 3 has stride 2), a global
    average pool and a linear layer; depth ``6n + 2``.  Parameter names
    follow the common PyTorch layout of this design (``conv1``, ``bn1``,
    ``layer{1,2,3}.{i}.{conv,bn}{1,2}``, ``linear``), so published
    checkpoints load by renaming alone (see ``docs/models.md``).
    """

    def __init__(self, n: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, *, stride: int) -> nn.Sequential:
        blocks = [_BasicBlock(in_planes, planes, stride=stride)]
        blocks += [_BasicBlock(planes, planes, stride=1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = functional.adaptive_avg_pool2d(out, 1)
        logits: torch.Tensor = self.linear(torch.flatten(out, 1))
        return logits


def _mlp(classes: int) -> nn.Module:
    """Flatten and three linear layers (3072-512-256-classes)."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=_LinearUnit(3 * 32 * 32, 512, dropout=0.0),
            fc2=_LinearUnit(512, 256, dropout=0.0),
            fc3=nn.Linear(256, classes),
        )
    )


def _build_minilm(classes: int) -> StagedModel:
    # splitlab.minilm builds on StagedModel, so it is imported when used.
    from splitlab.minilm import build_minilm

    return build_minilm(classes)


def _build_gpt_tiny(classes: int) -> StagedModel:
    from splitlab.decoder import build_decoder, training_text

    del classes
    return build_decoder("".join(sorted(set(training_text()))))


def _minilm_weights() -> dict[str, torch.Tensor]:
    from splitlab.minilm import staged_weights

    return staged_weights()


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
        _graph_model(
            "cnn-small", "small plain CNN, 8 stages, 34k parameters", _cnn_small
        ),
        _graph_model(
            "cnn-deep", "deeper plain CNN, 16 stages, 1.6M parameters", _cnn_deep
        ),
        _graph_model(
            "vgg11", "VGG-11 with batch norm, 15 stages, 9.2M parameters", _vgg11
        ),
        _graph_model(
            "mobilenetv2", "MobileNetV2, 22 stages, 2.2M parameters", _MobileNetV2
        ),
        _graph_model(
            "resnet20",
            "CIFAR ResNet-20 (option-A shortcuts), 15 stages, 0.27M parameters",
            functools.partial(_CifarResNet, 3),
        ),
        _graph_model(
            "resnet56",
            "CIFAR ResNet-56 (option-A shortcuts), 33 stages, 0.85M parameters",
            functools.partial(_CifarResNet, 9),
        ),
        _graph_model(
            "mlp", "flatten and 3 linear layers, 4 stages, 1.7M parameters", _mlp
        ),
        ModelInfo(
            "minilm",
            "all-MiniLM-L6-v2 sentence encoder (real weights), 8 stages, 22.6M "
            "parameters",
            _build_minilm,
            pretrained=_minilm_weights,
            dataset="sentences",
        ),
        ModelInfo(
            "gpt-tiny",
            "character-level GPT decoder for 'splitlab generate', 6 stages, "
            "0.23M parameters",
            _build_gpt_tiny,
            dataset="prompts",
        ),
    )
}


def build_model(name: str, *, classes: int = 10) -> StagedModel:
    """Build a registered model, or a user's ``FILE.py:FACTORY``, with fresh weights.

    A user's factory is called with the number of classes (or with nothing if
    it takes no argument) and returns a :class:`torch.nn.Module` taking one
    3x32x32 image batch; its stages are cut from its traced graph.

    A name ending in ``.onnx`` is an ONNX file, cut by
    :mod:`splitlab.onnxgraph` and run with onnxruntime on as many threads as
    torch uses here; its weights are the file's.

    Raises
    ------
    ConfigError
        If ``name`` is neither registered nor a loadable user model.
    """
    if name not in MODELS and is_reference(name):
        return _user_model(name, classes)
    if is_onnx_file(name):
        from splitlab.onnxgraph import OnnxStagedModel

        return OnnxStagedModel(
            Path(name), threads=torch.get_num_threads(), classes=classes, name=name
        )
    try:
        info = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None
    return info.build(classes)


USER_INPUT_SHAPE = (3, 32, 32)


def _user_model(reference: str, classes: int) -> StagedModel:
    from splitlab.graph import staged_from_module

    source, _, attribute = reference.rpartition(":")
    factory = getattr(import_file(Path(source), role="model"), attribute, None)
    if not callable(factory):
        raise ConfigError(f"model file {source} has no callable {attribute!r}")
    try:
        built = factory(classes) if _takes_argument(factory) else factory()
    except Exception as error:
        raise ConfigError(
            f"model factory {reference} raised {type(error).__name__}: {error}"
        ) from error
    if isinstance(built, StagedModel):
        return built
    if not isinstance(built, nn.Module):
        raise ConfigError(
            f"model factory {reference} returned a {type(built).__name__}, "
            "not a torch.nn.Module"
        )
    try:
        return staged_from_module(reference, built, input_shape=USER_INPUT_SHAPE)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"model {reference} does not take a batch of {USER_INPUT_SHAPE} "
            f"inputs: {type(error).__name__}: {error}"
        ) from error


def _takes_argument(factory: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in parameters
    )
