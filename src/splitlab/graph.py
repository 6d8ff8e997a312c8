"""Cut points found in a traced graph: any PyTorch module becomes partitionable.

A module is traced with ``torch.fx`` into a list of operations in execution
order.  A cut is a position in that list; it is *valid* when exactly one value
made before it is used after it, and that value is a tensor: the head then has
one output and the tail one input, so the tensor can cross a link.  A skip
connection keeps its input alive over the layers it skips, so the positions
inside a residual block have two tensors crossing and are not valid.

Values fetched from the module's own attributes (parameters, buffers,
constants) never count as crossing: each side reads its own copy of the
weights.

A :class:`~splitlab.models.StagedModel` is built from the valid cuts.  Its
stages follow the module tree: ``nn.Sequential`` containers (and the root) are
opened, and every other submodule call is one *unit* that a stage boundary
never splits, so a residual block, a conv-bn-relu block or a single layer is
one stage named by its module path (``layer1.0``, ``conv1``).  Every stage
boundary is a valid cut; valid cuts inside a unit (between a block's add and
its final ReLU, say) are found by :func:`valid_cuts` and can be split with
:func:`split_module`, but are not stage boundaries.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from splitlab.errors import ConfigError
from splitlab.models import StagedModel

logger = logging.getLogger(__name__)

# Operations that compute something; placeholders, attribute reads and the
# output node are handled on their own.
_COMPUTE_OPS = frozenset({"call_module", "call_function", "call_method"})


@dataclass(frozen=True, slots=True)
class CutPoint:
    """A position in a traced model (or an ONNX graph, where ``after`` and
    ``tensor`` are node and tensor labels) where exactly one tensor crosses.

    Attributes
    ----------
    index:
        How many operations run before the cut: ``0`` sends the input, the
        last cut sends the model's output.
    after:
        Name of the operation just before the cut (the input's name at
        ``index == 0``); :func:`split_module` takes this name.
    tensor:
        Name of the operation whose output crosses the cut.
    shape:
        Shape of the crossing tensor for the example input, batch included.
    tensor_bytes:
        Bytes of the crossing tensor for the example input.
    """

    index: int
    after: str
    tensor: str
    shape: tuple[int, ...]
    tensor_bytes: int


@dataclass(frozen=True, slots=True)
class _Value:
    """What one operation produced on the example input."""

    type_name: str
    shape: tuple[int, ...] | None
    tensor_bytes: int

    def describe(self, name: str) -> str:
        if self.shape is None:
            return f"{name} ({self.type_name})"
        return f"{name} {list(self.shape)}"


class _Recorder(fx.Interpreter):
    """Runs a traced graph once and records the kind and size of every value."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[fx.Node, _Value] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.values[n] = _Value(
                "Tensor", tuple(result.shape), result.numel() * result.element_size()
            )
        else:
            self.values[n] = _Value(type(result).__name__, None, 0)
        return result


def trace_module(module: nn.Module, *, name: str | None = None) -> fx.GraphModule:
    """Trace ``module`` with ``torch.fx.symbolic_trace``.

    Parameters
    ----------
    module:
        Any module whose ``forward`` takes one tensor and returns one tensor.
    name:
        The model's name, for error messages (the class name if omitted).

    Raises
    ------
    ConfigError
        If the tracer fails (data-dependent control flow, say); the message
        names the module and repeats the tracer's own message.
    """
    label = name or type(module).__qualname__
    try:
        return fx.symbolic_trace(module)
    except Exception as error:
        # The tracer runs the user's own forward(), which may raise anything.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(
            f"model {label!r} ({type(module).__qualname__}) cannot be traced by "
            f"torch.fx: {reason}"
        ) from None


class ModelGraph:
    """A module traced once, with its operations in order and its valid cuts.

    Parameters
    ----------
    module:
        The module to analyse; its forward takes one tensor, returns one.
    example:
        An input batch.  The module runs on it once in eval mode (its own
        train/eval flags are restored afterwards) to learn which values are
        tensors and how large they are.
    name:
        The model's name, for error messages.

    Raises
    ------
    ConfigError
        If the module cannot be traced, takes other than one input or does not
        return one tensor.

    Notes
    -----
    The head, tail and stage modules share the submodules of ``module``: they
    are views of the same weights, not copies.
    """

    def __init__(
        self, module: nn.Module, example: torch.Tensor, *, name: str | None = None
    ) -> None:
        self.name = name or type(module).__qualname__
        self.traced = trace_module(module, name=self.name)
        graph = self.traced.graph

        # One tensor in, one tensor out.
        inputs = [node for node in graph.nodes if node.op == "placeholder"]
        if len(inputs) != 1:
            names = ", ".join(node.name for node in inputs)
            raise ConfigError(
                f"model {self.name!r}: forward() takes {len(inputs)} inputs "
                f"({names}); a partitionable model takes one tensor"
            )
        self.input = inputs[0]
        if not self.input.users:
            raise ConfigError(f"model {self.name!r}: forward() ignores its input")
        output_node = next(node for node in graph.nodes if node.op == "output")
        result = output_node.args[0]
        if not isinstance(result, fx.Node):
            raise ConfigError(
                f"model {self.name!r}: forward() returns {type(result).__name__}; "
                "a partitionable model returns one tensor"
            )
        self.result = result
        self.order: tuple[fx.Node, ...] = tuple(
            node for node in graph.nodes if node.op in _COMPUTE_OPS
        )
        self.values = self._record(module, example)
        if self.values[self.result].shape is None:
            raise ConfigError(
                f"model {self.name!r}: forward() returns "
                f"{self.values[self.result].type_name}; a partitionable model "
                "returns one tensor"
            )
        self.names = _operation_names(self.order)
        self.names[self.input] = self.input.name

        # crossing[p]: the values made before position p and used at or after it.
        self.crossing = _crossing_values(self.input, self.order, output_node)
        self.cuts = tuple(
            CutPoint(
                index=index,
                after=self._after(index),
                tensor=self.names[values[0]],
                shape=self.values[values[0]].shape or (),
                tensor_bytes=self.values[values[0]].tensor_bytes,
            )
            for index, values in enumerate(self.crossing)
            if len(values) == 1 and self.values[values[0]].shape is not None
        )
        logger.debug(
            "traced %s: %d operations, %d valid cuts",
            self.name,
            len(self.order),
            len(self.cuts),
        )

    def _record(
        self, module: nn.Module, example: torch.Tensor
    ) -> dict[fx.Node, _Value]:
        modes = {submodule: submodule.training for submodule in module.modules()}
        recorder = _Recorder(self.traced)
        try:
            module.eval()
            with torch.no_grad():
                recorder.run(example)
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ConfigError(
                f"model {self.name!r} failed on an example input of shape "
                f"{list(example.shape)}: {reason}"
            ) from None
        finally:
            for submodule, training in modes.items():
                submodule.training = training
        recorder.values[self.input] = _Value(
            "Tensor", tuple(example.shape), example.numel() * example.element_size()
        )
        return recorder.values

    def _after(self, index: int) -> str:
        return self.names[self.order[index - 1]] if index else self.input.name

    @property
    def operations(self) -> tuple[str, ...]:
        """Names of the operations in execution order (what ``after`` may name)."""
        return tuple(self.names[node] for node in self.order)

    def cut(self, after: str) -> CutPoint:
        """The valid cut just after the operation named ``after``.

        Raises
        ------
        ConfigError
            If no operation has that name, or if more than one value (or a
            value that is not a tensor) crosses the position after it.
        """
        positions = {self._after(index): index for index in range(len(self.crossing))}
        if after not in positions:
            known = ", ".join(cut.after for cut in self.cuts)
            raise ConfigError(
                f"model {self.name!r} has no operation named {after!r}; "
                f"valid cuts are after: {known}"
            )
        index = positions[after]
        for cut in self.cuts:
            if cut.index == index:
                return cut

        values = self.crossing[index]
        described = ", ".join(self.values[v].describe(self.names[v]) for v in values)
        before = [cut.after for cut in self.cuts if cut.index < index][-1]
        following = next(cut.after for cut in self.cuts if cut.index > index)
        nearest = f"nearest valid cuts: after {before} or after {following}"
        if len(values) == 1:
            raise ConfigError(
                f"cut after {after} passes a value of type "
                f"{self.values[values[0]].type_name}, not a tensor; {nearest}"
            )
        kind = (
            "tensors"
            if all(self.values[v].shape is not None for v in values)
            else "values"
        )
        raise ConfigError(
            f"cut after {after} is inside a residual block: {len(values)} {kind} "
            f"cross it ({described}); {nearest}"
        )

    def split(self, after: str) -> tuple[fx.GraphModule, fx.GraphModule]:
        """Head and tail modules of the cut after the operation ``after``.

        ``tail(head(x))`` computes what the whole module computes.

        Raises
        ------
        ConfigError
            If the cut is not valid (see :meth:`cut`).
        """
        index = self.cut(after).index
        return self.piece(0, index, "Head"), self.piece(index, len(self.order), "Tail")

    def piece(self, start: int, stop: int, class_name: str) -> fx.GraphModule:
        """The operations between the valid cuts at ``start`` and ``stop``.

        Both indices must be :attr:`CutPoint.index` values of valid cuts.
        """
        valid = {cut.index for cut in self.cuts}
        if start not in valid or stop not in valid or start > stop:
            raise ValueError(f"{start}..{stop} is not a range between valid cuts")
        graph = fx.Graph()
        source = self.crossing[start][0]
        env: dict[fx.Node, fx.Node] = {source: graph.placeholder(source.name)}

        def lookup(node: fx.Node) -> fx.Node:
            # Anything made before the cut other than its one tensor is an
            # attribute read, which each piece makes for itself.
            if node not in env:
                env[node] = graph.node_copy(node, lookup)
            return env[node]

        for node in self.order[start:stop]:
            env[node] = graph.node_copy(node, lookup)
        graph.output(lookup(self.crossing[stop][0]))
        graph.lint()
        return fx.GraphModule(self.traced, graph, class_name=class_name)

    def stage_bounds(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of every stage, in order.

        Stage boundaries are the valid cuts that do not fall inside a unit (a
        call of a submodule other than an ``nn.Sequential`` container).
        """
        if not self.order:
            raise ConfigError(f"model {self.name!r} performs no operations")
        units = [_unit(node) for node in self.order]
        span: dict[str, tuple[int, int]] = {}
        for index, unit in enumerate(units):
            if unit is not None:
                first, _ = span.get(unit, (index, index))
                span[unit] = (first, index)
        inside = {
            position
            for first, last in span.values()
            for position in range(first + 1, last + 1)
        }
        bounds = [cut.index for cut in self.cuts if cut.index not in inside]

        stages = []
        for start, stop in itertools.pairwise(bounds):
            parts: list[str] = []
            for index in range(start, stop):
                part = units[index] or self.names[self.order[index]]
                if part not in parts:
                    parts.append(part)
            stages.append(("+".join(parts), start, stop))
        return stages

    def stages(self) -> list[tuple[str, fx.GraphModule]]:
        """``(name, module)`` of every stage, ready for :class:`StagedModel`."""
        return [
            (name, self.piece(start, stop, "Stage"))
            for name, start, stop in self.stage_bounds()
        ]


def _unit(node: fx.Node) -> str | None:
    """The outermost non-container module call ``node`` belongs to, if any."""
    stack: Mapping[str, tuple[str, type[nn.Module]]] = node.meta.get(
        "nn_module_stack", {}
    )
    for key, (_, module_type) in stack.items():
        if module_type.forward is not nn.Sequential.forward:
            return key
    return None


def _operation_names(order: tuple[fx.Node, ...]) -> dict[fx.Node, str]:
    """Readable, unique names: module paths, or ``path.function`` for calls."""
    names: dict[fx.Node, str] = {}
    used: set[str] = set()
    for node in order:
        stack: Mapping[str, Any] = node.meta.get("nn_module_stack", {})
        scope = list(stack)[-1] if stack else None
        if node.op == "call_module":
            base = scope or str(node.target)
        else:
            # fx numbers repeated calls globally (add_3); number them per scope.
            function = re.sub(r"_\d+$", "", node.name)
            base = f"{scope}.{function}" if scope else function
        name, suffix = base, 0
        while name in used:
            suffix += 1
            name = f"{base}_{suffix}"
        used.add(name)
        names[node] = name
    return names


def _crossing_values(
    source: fx.Node, order: tuple[fx.Node, ...], output: fx.Node
) -> list[list[fx.Node]]:
    """For every position ``0..len(order)``, the values alive across it."""
    position = {node: index + 1 for index, node in enumerate(order)}
    position[source] = 0
    position[output] = len(order) + 1
    crossing: list[list[fx.Node]] = [[] for _ in range(len(order) + 1)]
    for value in (source, *order):
        last_use = max((position[user] for user in value.users), default=0)
        # Made at position[value]; alive at every cut before its last user.
        for cut in range(position[value], last_use):
            crossing[cut].append(value)
    return crossing


def valid_cuts(module: nn.Module, example: torch.Tensor) -> list[CutPoint]:
    """Every valid cut of ``module``, from the input (index 0) to the output.

    Raises
    ------
    ConfigError
        If the module cannot be traced or is not one tensor in, one tensor out.
    """
    return list(ModelGraph(module, example).cuts)


def split_module(
    module: nn.Module, example: torch.Tensor, *, after: str
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Head and tail of ``module`` cut after the operation named ``after``.

    Raises
    ------
    ConfigError
        If the cut is inside a residual block (more than one tensor crosses
        it), passes a non-tensor, or names no operation.
    """
    return ModelGraph(module, example).split(after)


def staged_from_module(
    name: str, module: nn.Module, *, input_shape: tuple[int, ...]
) -> StagedModel:
    """A :class:`StagedModel` whose stage boundaries are valid cuts of ``module``.

    Parameters
    ----------
    name:
        The model's name (registry name for bundled models).
    module:
        Any module, one tensor in and one tensor out; the stages share its
        weights.
    input_shape:
        Shape of one input sample, without the batch dimension; a zero batch
        of one of that shape is the example the graph is analysed with.

    Raises
    ------
    ConfigError
        If the module cannot be traced or is not one tensor in, one tensor out.
    """
    example = torch.zeros(1, *input_shape)
    stages = ModelGraph(module, example, name=name).stages()
    logger.debug("model %s: %d stages", name, len(stages))
    return StagedModel(name, stages, input_shape=input_shape)


def staged_state_dict(
    model: StagedModel, source: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a state dict of the source module to ``model``'s parameter names.

    A stage keeps the source's module paths, so ``layer1.0.conv1.weight`` in
    stage 4 is ``stages.4.layer1.0.conv1.weight`` in the staged model.

    Raises
    ------
    ConfigError
        If names are missing from ``source`` or left over, with the first few.
    """
    targets: dict[str, list[str]] = {}
    for index, stage in enumerate(model.stages):
        for key in stage.state_dict():
            targets.setdefault(key, []).append(f"stages.{index}.{key}")
    missing = sorted(set(targets) - set(source))
    unexpected = sorted(set(source) - set(targets))
    if missing or unexpected:
        raise ConfigError(
            f"state dict does not fit model {model.model_name!r}: "
            f"{len(missing)} missing ({', '.join(missing[:3])}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})"
        )
    return {target: value for key, value in source.items() for target in targets[key]}
