"""Cut points of ONNX graphs: an ``.onnx`` file becomes a partitionable model.

An ONNX graph is a list of nodes that read and write named tensors.  The
nodes are put in topological order and the *constant* ones are set apart:
initializers, ``Constant`` nodes, and every deterministic node whose inputs
are all constant (the ``Identity`` of a weight, the ``Shape`` of a constant).
Each side of a cut computes the constants it needs itself, as each side of a
:mod:`splitlab.graph` cut reads its own copy of the weights.

A cut is a position between two of the remaining nodes.  It is *valid* when
exactly one tensor made before it (the graph's input counts as made before
the first node) is read at or after it, or is the graph's output.  A skip
connection, a concatenation of branches or a shape computed early and used
late keeps a second tensor alive, and the cuts it spans are refused with the
tensors named.

The stages of an :class:`OnnxStagedModel` are the maximal runs of nodes
between consecutive valid cuts.  Any range of stages is extracted as a model
of its own (one input, one output, the constants it needs) and run with
onnxruntime; one session is kept per range.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf.message import DecodeError
from onnx import helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from splitlab.errors import ConfigError
from splitlab.graph import CutPoint
from splitlab.models import USER_INPUT_SHAPE, StagedModel

logger = logging.getLogger(__name__)

# Nodes that produce a different value on every run are never folded into
# constants, even when they read nothing.
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)

# What onnxruntime raises when a model cannot run on an input.
_ORT_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)

# Shown when a refused cut lists the tensors that cross it.
_SHOWN_TENSORS = 4


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Shape, type and size of one tensor for the example input.

    Attributes
    ----------
    shape:
        Dimensions, batch included.
    dtype:
        Numpy name of the element type (``float32``).
    tensor_bytes:
        Bytes of the tensor.
    """

    shape: tuple[int, ...]
    dtype: str
    tensor_bytes: int

    @classmethod
    def of(cls, array: np.ndarray[Any, Any]) -> TensorInfo:
        """The record of ``array``."""
        return cls(tuple(array.shape), str(array.dtype), int(array.nbytes))

    @classmethod
    def inferred(cls, value: onnx.ValueInfoProto) -> TensorInfo | None:
        """The record of a fully known numeric value info, else ``None``."""
        tensor_type = value.type.tensor_type
        if not tensor_type.elem_type or not tensor_type.HasField("shape"):
            return None
        shape = []
        for dim in tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                return None
            shape.append(int(dim.dim_value))
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if dtype.kind not in "biufc":
            return None
        size = int(np.prod(shape)) if shape else 1
        return cls(tuple(shape), str(dtype), size * dtype.itemsize)

    def describe(self, name: str) -> str:
        """``name [1, 16, 32, 32]``."""
        return f"{name} {list(self.shape)}"


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read the ONNX model at ``path``, put its nodes in order and check it.

    Raises
    ------
    ConfigError
        If the file is missing, unreadable, not an ONNX protobuf, has a node
        that reads a tensor nothing provides, has a cycle or fails
        ``onnx.checker``; the message names the file.
    """
    if not path.is_file():
        raise ConfigError(f"ONNX model {path} does not exist or is not a file")
    try:
        model = onnx.load(str(path))
    except (OSError, DecodeError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"ONNX model {path} cannot be read: {reason}") from None
    if not model.graph.node:
        raise ConfigError(f"ONNX model {path} has no nodes")

    # The checker wants the nodes in topological order, which a file need
    # not list them in; they are ordered first.
    graph = model.graph
    available = {value.name for value in graph.input}
    available |= {tensor.name for tensor in graph.initializer}
    available |= {tensor.values.name for tensor in graph.sparse_initializer}
    ordered = []
    for node in _topological(graph, str(path), available):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        ordered.append(copy)
    del graph.node[:]
    graph.node.extend(ordered)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(f"ONNX model {path} is not valid ONNX: {first}") from None
    return model


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors the subgraphs of ``node`` (If, Loop, Scan) read."""
    reads: set[str] = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs)
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        for graph in graphs:
            defined = {value.name for value in graph.input}
            defined |= {tensor.name for tensor in graph.initializer}
            defined |= {tensor.values.name for tensor in graph.sparse_initializer}
            for inner in graph.node:
                defined.update(inner.output)
            for inner in graph.node:
                needed = {name for name in inner.input if name}
                needed |= _subgraph_reads(inner)
                reads |= needed - defined
    return reads


def _reads(node: onnx.NodeProto) -> tuple[str, ...]:
    """Every tensor ``node`` reads, its subgraphs' outer reads included."""
    direct = [name for name in node.input if name]
    extra = sorted(_subgraph_reads(node) - set(direct))
    return (*dict.fromkeys(direct), *extra)


class OnnxGraph:
    """An ONNX model's nodes in order, its constants, and its valid cuts.

    Parameters
    ----------
    model:
        A checked model (see :func:`load_onnx`) with one input and one output.
    example:
        An input batch.  The model runs on it once, with every tensor made
        by a node as an extra output, to learn each tensor's shape and size.
    name:
        The model's name in messages (its file, usually).

    Raises
    ------
    ConfigError
        If the graph has other than one input or one output, reads a tensor
        nothing makes, has a cycle, or fails on ``example`` (the message
        names the input shape the file declares).
    """

    def __init__(
        self, model: onnx.ModelProto, example: np.ndarray[Any, Any], *, name: str
    ) -> None:
        self.model = model
        self.name = name
        graph = model.graph
        self.initializers: dict[str, onnx.TensorProto] = {
            tensor.name: tensor for tensor in graph.initializer
        }
        sparse = {tensor.values.name for tensor in graph.sparse_initializer}

        # One tensor in, one tensor out.
        self.input = _single_input(model, name)
        if len(graph.output) != 1:
            names = ", ".join(value.name for value in graph.output)
            raise ConfigError(
                f"ONNX model {name} has {len(graph.output)} outputs ({names}); a "
                "partitionable model returns one tensor"
            )
        self.output: onnx.ValueInfoProto = graph.output[0]

        nodes = _topological(
            graph, name, {self.input.name, *self.initializers, *sparse}
        )
        constant = set(self.initializers) | sparse
        self.constant_nodes: list[onnx.NodeProto] = []
        order: list[onnx.NodeProto] = []
        for node in nodes:
            if (
                node.domain in ("", "ai.onnx")
                and node.op_type not in _RANDOM_OPS
                and all(read in constant for read in _reads(node))
            ):
                self.constant_nodes.append(node)
                constant.update(node.output)
            else:
                order.append(node)
        self.constants = frozenset(constant)
        if self.output.name in self.constants:
            raise ConfigError(
                f"ONNX model {name}: its output {self.output.name} does not depend "
                "on its input"
            )
        self.order: tuple[onnx.NodeProto, ...] = tuple(order)
        self.labels: tuple[str, ...] = _labels(self.order)
        self.crossing = self._crossing()
        self._types = _value_types(model)
        self.shapes = self._probe(example)
        self.cuts: tuple[CutPoint, ...] = tuple(
            CutPoint(
                index,
                self._after(index),
                values[0],
                self.shapes[values[0]].shape,
                self.shapes[values[0]].tensor_bytes,
            )
            for index, values in enumerate(self.crossing)
            if len(values) == 1
        )
        logger.debug(
            "ONNX model %s: %d nodes (%d constant), %d valid cuts",
            name,
            len(nodes),
            len(self.constant_nodes),
            len(self.cuts),
        )

    @classmethod
    def from_file(
        cls, path: Path, *, input_shape: tuple[int, ...] | None = None
    ) -> OnnxGraph:
        """Load and analyse the ONNX file at ``path`` on a zero example.

        ``input_shape`` is one sample's shape (see :func:`sample_shape`).
        """
        model = load_onnx(path)
        shape = sample_shape(model, name=str(path), given=input_shape)
        dtype = helper.tensor_dtype_to_np_dtype(
            _single_input(model, str(path)).type.tensor_type.elem_type
        )
        return cls(model, np.zeros((1, *shape), dtype=dtype), name=str(path))

    def _probe(self, example: np.ndarray[Any, Any]) -> dict[str, TensorInfo]:
        """The shape and type of every tensor the nodes make, for ``example``.

        Shape inference with the input's dimensions fixed gives most of them;
        the model then runs once on ``example`` with the others (shapes
        computed at run time) as extra outputs, which also refuses an input
        the model cannot take.  Only those few are held in memory at once.
        """
        fixed = onnx.ModelProto()
        fixed.CopyFrom(self.model)
        source = next(v for v in fixed.graph.input if v.name == self.input.name)
        for dim, size in zip(
            source.type.tensor_type.shape.dim, example.shape, strict=True
        ):
            dim.Clear()
            dim.dim_value = size
        shapes = {self.input.name: TensorInfo.of(example)}
        try:
            inferred = onnx.shape_inference.infer_shapes(
                fixed, strict_mode=False, data_prop=True
            )
        except onnx.shape_inference.InferenceError:
            inferred = fixed
        for value in inferred.graph.value_info:
            info = TensorInfo.inferred(value)
            if info is not None:
                shapes[value.name] = info

        made = [output for node in self.order for output in node.output if output]
        unknown = [t for t in dict.fromkeys(made) if t not in shapes]
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        for tensor in unknown:
            if tensor != self.output.name:
                probe.graph.output.append(
                    self._types.get(tensor)
                    or helper.make_empty_tensor_value_info(tensor)
                )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(
                probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            names = [value.name for value in session.get_outputs()]
            arrays = session.run(names, {self.input.name: example})
        except _ORT_ERRORS as error:
            reason = " ".join(str(error).split())
            raise ConfigError(
                f"ONNX model {self.name} failed on an input of shape "
                f"{list(example.shape)} (its declared input is "
                f"{declared_shape(self.input)}): {reason}"
            ) from None
        for tensor, array in zip(names, arrays, strict=True):
            shapes[tensor] = TensorInfo.of(np.asarray(array))
        logger.debug("ONNX model %s: %d of %d shapes found by running it",
                     self.name, len(names), len(made))  # fmt: skip
        return shapes

    def _crossing(self) -> list[tuple[str, ...]]:
        """For every position ``0..len(order)``, the tensors alive across it."""
        made = {self.input.name: 0}
        for index, node in enumerate(self.order):
            for output in node.output:
                if output:
                    made[output] = index + 1
        last_use: dict[str, int] = {}
        for index, node in enumerate(self.order):
            for read in _reads(node):
                if read not in self.constants:
                    last_use[read] = index + 1
        last_use[self.output.name] = len(self.order) + 1
        crossing: list[list[str]] = [[] for _ in range(len(self.order) + 1)]
        for tensor, position in made.items():
            for cut in range(position, last_use.get(tensor, position)):
                crossing[cut].append(tensor)
        return [tuple(values) for values in crossing]

    def _after(self, index: int) -> str:
        return self.labels[index - 1] if index else self.input.name

    def cut(self, after: str) -> CutPoint:
        """The valid cut just after the node labelled ``after``.

        Raises
        ------
        ConfigError
            If no node has that label, or if more than one tensor crosses the
            position after it; the message names the tensors and the nearest
            valid cuts.
        """
        positions = {self._after(index): index for index in range(len(self.crossing))}
        if after not in positions:
            raise ConfigError(
                f"ONNX model {self.name} has no node labelled {after!r}; "
                f"{len(self.cuts)} valid cuts, the first after "
                f"{', '.join(cut.after for cut in self.cuts[:5])}"
            )
        index = positions[after]
        for cut in self.cuts:
            if cut.index == index:
                return cut

        values = self.crossing[index]
        shown = ", ".join(
            self.shapes[value].describe(value) for value in values[:_SHOWN_TENSORS]
        )
        if len(values) > _SHOWN_TENSORS:
            shown += f" and {len(values) - _SHOWN_TENSORS} more"
        before = [cut.after for cut in self.cuts if cut.index < index][-1]
        following = next(cut.after for cut in self.cuts if cut.index > index)
        raise ConfigError(
            f"cut after {after} in ONNX model {self.name} is inside a residual or "
            f"branching structure: {len(values)} tensors cross it ({shown}); "
            f"nearest valid cuts: after {before} or after {following}"
        )

    def split(self, after: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
        """Head and tail models of the cut after the node labelled ``after``.

        Raises
        ------
        ConfigError
            If the cut is not valid (see :meth:`cut`).
        """
        index = self.cut(after).index
        return self.segment(0, index), self.segment(index, len(self.order))

    def segment(self, start: int, stop: int) -> onnx.ModelProto:
        """A model of the nodes between the valid cuts at ``start`` and ``stop``.

        Its one input is the tensor crossing ``start``, its one output the
        tensor crossing ``stop``; the constants its nodes read are copied in.
        ``onnx.checker`` accepts it.
        """
        valid = {cut.index for cut in self.cuts}
        if start not in valid or stop not in valid or start >= stop:
            raise ValueError(f"{start}..{stop} is not a range between valid cuts")
        source = self.crossing[start][0]
        result = self.crossing[stop][0]
        nodes = list(self.order[start:stop])

        # The constants these nodes read, and the constants those are made of.
        needed = {read for node in nodes for read in _reads(node)} & self.constants
        constant_nodes: list[onnx.NodeProto] = []
        for node in reversed(self.constant_nodes):
            if any(output in needed for output in node.output):
                constant_nodes.append(node)
                needed.update(_reads(node))
        constant_nodes.reverse()

        graph = helper.make_graph(
            [*constant_nodes, *nodes],
            f"{self.model.graph.name or 'graph'}_{start}_{stop}",
            [self._value_info(source)],
            [self._value_info(result)],
            initializer=[
                tensor for key, tensor in self.initializers.items() if key in needed
            ],
            sparse_initializer=[
                tensor
                for tensor in self.model.graph.sparse_initializer
                if tensor.values.name in needed
            ],
        )
        piece = helper.make_model(
            graph,
            opset_imports=list(self.model.opset_import),
            ir_version=self.model.ir_version,
            producer_name="splitlab",
        )
        piece.functions.extend(self.model.functions)
        onnx.checker.check_model(piece)
        return piece

    def _value_info(self, tensor: str) -> onnx.ValueInfoProto:
        if tensor == self.input.name:
            return self.input
        if tensor == self.output.name:
            return self.output
        info = self.shapes[tensor]
        inferred = self._types.get(tensor)
        if (
            inferred is not None
            and inferred.type.tensor_type.HasField("shape")
            and len(inferred.type.tensor_type.shape.dim) == len(info.shape)
        ):
            return inferred
        # Shape inference cannot follow a shape computed at run time (a
        # Reshape to a Concat of Shape slices): the type and rank come from
        # the example and every dimension is left free.
        return helper.make_tensor_value_info(
            tensor,
            helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype)),
            [f"{tensor}:{axis}" for axis in range(len(info.shape))],
        )

    def stage_bounds(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of every stage: the runs between valid cuts."""
        bounds = [cut.index for cut in self.cuts]
        stages = []
        used: set[str] = set()
        for start, stop in itertools.pairwise(bounds):
            base = _stage_name(self.order[start:stop], self.labels[start:stop])
            name, suffix = base, 0
            while name in used:
                suffix += 1
                name = f"{base}_{suffix}"
            used.add(name)
            stages.append((name, start, stop))
        return stages

    def param_bytes(self, start: int, stop: int) -> int:
        """Bytes of the constants that nodes ``start..stop`` read first.

        A constant read by several stages counts for the first only, so the
        stages' figures add up to the model's.  Weights held in ``Constant``
        nodes (as converters from Paddle write them) count like initializers.
        """
        owner: dict[str, int] = {}
        for index, node in enumerate(self.order):
            for read in _reads(node):
                owner.setdefault(read, index)
        return sum(
            size
            for tensor, size in self._constant_bytes().items()
            if start <= owner.get(tensor, -1) < stop
        )

    def _constant_bytes(self) -> dict[str, int]:
        """Bytes of every stored constant, keyed by the tensor read from it.

        A stored constant is an initializer or a ``Constant`` node's value;
        a folded node (``Identity`` of a weight) is charged what it reads.
        """
        stored = {
            name: _tensor_bytes(tensor) for name, tensor in self.initializers.items()
        }
        for node in self.constant_nodes:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        stored[node.output[0]] = _tensor_bytes(attribute.t)
            else:
                total = sum(stored.pop(read, 0) for read in _reads(node))
                stored[node.output[0]] = stored.get(node.output[0], 0) + total
        return stored


def _single_input(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """The graph's one input (initializers listed as inputs are weights)."""
    weights = {tensor.name for tensor in model.graph.initializer}
    weights |= {tensor.values.name for tensor in model.graph.sparse_initializer}
    inputs: list[onnx.ValueInfoProto] = [
        value for value in model.graph.input if value.name not in weights
    ]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise ConfigError(
            f"ONNX model {name} has {len(inputs)} inputs ({names}); a "
            "partitionable model takes one tensor"
        )
    return inputs[0]


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _topological(
    graph: onnx.GraphProto, name: str, available: set[str]
) -> list[onnx.NodeProto]:
    """The graph's nodes in an order where every tensor is made before it is read.

    Among the nodes ready at once, the one listed first in the file goes
    first, so a file already in order keeps its order.
    """
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for output in node.output:
            if output:
                producer[output] = index
    waiting: list[int] = []
    readers: dict[int, list[int]] = {index: [] for index in range(len(graph.node))}
    ready: list[int] = []
    for index, node in enumerate(graph.node):
        sources = set()
        for read in _reads(node):
            if read in available:
                continue
            if read not in producer:
                raise ConfigError(
                    f"ONNX model {name}: node {node.name or node.op_type} reads "
                    f"{read}, which no node, input or initializer provides"
                )
            sources.add(producer[read])
        waiting.append(len(sources))
        for source in sources:
            readers[source].append(index)
        if not sources:
            heapq.heappush(ready, index)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(graph.node[index])
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(graph.node):
        raise ConfigError(
            f"ONNX model {name} has a cycle among {len(graph.node) - len(order)} nodes"
        )
    return order


def _labels(order: Sequence[onnx.NodeProto]) -> tuple[str, ...]:
    """Unique labels: the node's name, else its first output's name."""
    labels = []
    used: set[str] = set()
    for node in order:
        base = node.name or next((o for o in node.output if o), node.op_type)
        label, suffix = base, 0
        while label in used:
            suffix += 1
            label = f"{base}_{suffix}"
        used.add(label)
        labels.append(label)
    return tuple(labels)


def _stage_name(nodes: Sequence[onnx.NodeProto], labels: Sequence[str]) -> str:
    """A readable name for a run of nodes.

    Nodes named by scope paths (``/layer1/layer1.0/conv1/Conv``, as
    ``torch.onnx.export`` names them) give the scope they share
    (``layer1.layer1.0``).  Otherwise a single node is named by its label and
    a run by its first and last labels (``conv2d_3.tmp_0..relu_2.tmp_0``).
    """
    if all(node.name.startswith("/") for node in nodes):
        scopes = [node.name.strip("/").split("/")[:-1] for node in nodes]
        shared = scopes[0]
        for scope in scopes[1:]:
            common = 0
            while common < min(len(shared), len(scope)) and (
                shared[common] == scope[common]
            ):
                common += 1
            shared = shared[:common]
        if shared:
            return ".".join(shared)
    first, last = labels[0].lstrip("/"), labels[-1].lstrip("/")
    return first if len(labels) == 1 else f"{first}..{last}"


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Types of the graph's tensors, from the file and from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except onnx.shape_inference.InferenceError:
        inferred = model
    values: dict[str, onnx.ValueInfoProto] = {}
    for value in (*model.graph.value_info, *inferred.graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            values[value.name] = value
    return values


def declared_shape(value: onnx.ValueInfoProto) -> list[int | str]:
    """A value's declared dimensions: sizes, or names/``?`` where dynamic."""
    dims: list[int | str] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or "?")
    return dims


class OnnxSessions:
    """One onnxruntime session per range of stages, made when first needed.

    Parameters
    ----------
    graph:
        The analysed model.
    bounds:
        Node index of every stage boundary, ``bounds[k]`` for cut ``k``.
    threads:
        Intra-op threads of every session.
    """

    def __init__(
        self, graph: OnnxGraph, bounds: Sequence[int], *, threads: int
    ) -> None:
        self.graph = graph
        self.bounds = tuple(bounds)
        self.threads = threads
        self._sessions: dict[tuple[int, int], onnxruntime.InferenceSession] = {}
        self._lock = threading.Lock()

    def session(self, start: int, stop: int) -> onnxruntime.InferenceSession:
        """The session that runs stages ``start+1..stop``."""
        key = (start, stop)
        with self._lock:
            if key not in self._sessions:
                piece = self.graph.segment(self.bounds[start], self.bounds[stop])
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                self._sessions[key] = onnxruntime.InferenceSession(
                    piece.SerializeToString(),
                    options,
                    providers=["CPUExecutionProvider"],
                )
                logger.debug("ONNX session for stages %d..%d of %s",
                             start + 1, stop, self.graph.name)  # fmt: skip
            return self._sessions[key]

    def run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start+1..stop`` on ``x``.

        A contiguous CPU tensor goes in without a copy (``numpy()`` shares its
        memory) and the session's output array is wrapped, not copied.
        """
        session = self.session(start, stop)
        array = np.ascontiguousarray(x.detach().cpu().numpy())
        source = self.graph.crossing[self.bounds[start]][0]
        (output,) = session.run(None, {source: array})
        return torch.from_numpy(np.asarray(output))


class OnnxStage(nn.Module):
    """One stage of an :class:`OnnxStagedModel`, run by its own session.

    It holds no parameters: the weights live in the session.
    """

    def __init__(self, sessions: OnnxSessions, index: int, param_bytes: int) -> None:
        super().__init__()
        # A plain attribute, not a submodule: the sessions are shared.
        self.sessions = sessions
        self.index = index
        self.param_bytes = param_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run this stage alone."""
        return self.sessions.run(x, self.index, self.index + 1)


class OnnxStagedModel(StagedModel):
    """An ONNX file as a :class:`StagedModel`, run with onnxruntime.

    Parameters
    ----------
    path:
        The ``.onnx`` file; its constants are the weights.
    input_shape:
        Shape of one input sample, without the batch dimension.  Required
        where the file's input has dynamic dimensions other than the batch,
        unless the input has rank 4, when those take the scenario images'
        ``3x32x32``; must agree with the file's fixed dimensions.
    threads:
        Intra-op threads of every onnxruntime session.
    classes:
        The data's number of classes: the model classifies when its output
        for one sample has shape ``[1, classes]``.
    name:
        The model's name (the path as given, if omitted).

    Raises
    ------
    ConfigError
        If the file is missing or invalid, has other than one input and one
        output, does not take ``input_shape``, or fails on a zero input of
        that shape (the message names the file and its declared input).
    """

    def __init__(
        self,
        path: Path,
        *,
        input_shape: tuple[int, ...] | None = None,
        threads: int = 1,
        classes: int | None = None,
        name: str | None = None,
    ) -> None:
        graph = OnnxGraph.from_file(path, input_shape=input_shape)
        stage_bounds = graph.stage_bounds()
        bounds = [cut.index for cut in graph.cuts]
        sessions = OnnxSessions(graph, bounds, threads=threads)
        stages = [
            (name, OnnxStage(sessions, index, graph.param_bytes(start, stop)))
            for index, (name, start, stop) in enumerate(stage_bounds)
        ]
        super().__init__(
            name or str(path),
            stages,
            input_shape=graph.shapes[graph.input.name].shape[1:],
        )
        self.graph = graph
        self.sessions = sessions
        self.output_shape = graph.shapes[graph.output.name].shape
        self.classifies = classes is not None and self.output_shape == (1, classes)
        logger.debug("ONNX model %s: %d stages, output %s",
                     path, self.num_stages, list(self.output_shape))  # fmt: skip

    def run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start+1..stop`` in one onnxruntime session."""
        self.check_cut(start)
        self.check_cut(stop)
        if start > stop:
            raise ValueError(f"start {start} is after stop {stop}")
        if start == stop:
            return x
        return self.sessions.run(x, start, stop)

    def prepare(self, start: int, stop: int) -> None:
        """Build the session of stages ``start+1..stop`` now, if not yet built."""
        super().prepare(start, stop)
        if start < stop:
            self.sessions.session(start, stop)

    def stage_param_bytes(self, index: int) -> int:
        """Bytes of the constants stage ``index`` (from 0) reads first."""
        stage = self.stages[index]
        assert isinstance(stage, OnnxStage)
        return stage.param_bytes


def sample_shape(
    model: onnx.ModelProto, *, name: str, given: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The shape of one input sample, without the batch dimension.

    ``given`` is checked against the file's fixed dimensions.  Without it
    the file's dimensions are taken; dynamic ones other than the batch are
    filled from the scenario images' ``3x32x32`` when the input has rank 4.

    Raises
    ------
    ConfigError
        Naming the file and its declared input, if the shapes disagree, the
        batch is fixed above one, or dynamic dimensions cannot be filled.
    """
    declared = declared_shape(_single_input(model, name))
    if not declared:
        raise ConfigError(f"ONNX model {name} takes a scalar, not a batch")
    batch, *sample = declared
    if isinstance(batch, int) and batch != 1:
        raise ConfigError(
            f"ONNX model {name} takes batches of exactly {batch} (input "
            f"{declared}); splitlab runs one sample at a time"
        )
    if given is None:
        if all(isinstance(dim, int) for dim in sample):
            return tuple(int(dim) for dim in sample)
        if len(sample) != len(USER_INPUT_SHAPE):
            raise ConfigError(
                f"ONNX model {name} has a dynamic input {declared}; give the "
                "shape of one sample"
            )
        given = USER_INPUT_SHAPE
    fits = len(given) == len(sample) and all(
        not isinstance(dim, int) or dim == size
        for dim, size in zip(sample, given, strict=False)
    )
    if not fits:
        raise ConfigError(
            f"ONNX model {name} expects input {declared}; it cannot take samples "
            f"of shape {list(given)}"
        )
    return tuple(given)
