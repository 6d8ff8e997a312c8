"""ONNX graphs cut at their valid cuts: real OCR networks and exported zoo models.

The OCR networks are the pretrained PP-OCR detector, recogniser and
orientation classifier that ship inside ``rapidocr-onnxruntime``; their input
is a real photograph (scikit-learn's ``china.jpg``), preprocessed as the OCR
pipeline does.

Tolerance: a head and a tail are separate onnxruntime sessions, and the
optimiser fuses operators differently in each (a BatchNormalization folded
into the Conv before it when both are on one side, Conv+Add+activation
fusions, MatMul+Add into Gemm), so the float32 arithmetic is reordered.
Outputs of these networks are probabilities and sigmoid maps in [0, 1]; a
few hundred reordered float32 operations move them by well under 1e-5 (the
largest difference measured is about 1e-6), while any real mistake (a wrong
tensor crossing, a constant missing or duplicated wrongly) moves them by
orders of magnitude more.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import rapidocr_onnxruntime
import torch
import yaml
from onnx import TensorProto, helper
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_sample_image

from splitlab.errors import ConfigError
from splitlab.models import MODELS
from splitlab.onnxgraph import OnnxGraph, OnnxStagedModel, load_onnx
from splitlab.profile import profile_model
from splitlab.report import RunSummary, summarise
from splitlab.results import ResultStore, RunRecord, TaskRecord
from splitlab.scenario import parse_scenario

OCR = Path(rapidocr_onnxruntime.__file__).parent / "models"
DET = OCR / "ch_PP-OCRv4_det_infer.onnx"
REC = OCR / "ch_PP-OCRv4_rec_infer.onnx"
CLS = OCR / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
ATOL = 1e-5

# Every sample's shape, small enough to keep the file fast: the detector
# needs sides that are multiples of 32, the recogniser and the classifier
# lines 48 pixels high.
SHAPES = {DET: (3, 64, 96), REC: (3, 48, 96), CLS: (3, 48, 96)}
# Valid cuts found at these shapes (the count does not depend on the shape).
CUTS = {DET: 52, REC: 214, CLS: 62}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: steadier than two on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TEXT = "SPLIT 42"


def _photo(path: Path) -> np.ndarray:
    """``china.jpg`` with a line of text, preprocessed for the network at ``path``.

    The detector sees the whole picture, the recogniser and the classifier
    the line of text, as the OCR pipeline feeds them.
    """
    channels, height, width = SHAPES[path]
    image = Image.fromarray(load_sample_image("china.jpg")[100:292, 150:438])
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 60, 278, 130), fill=(255, 255, 255))
    draw.text((20, 70), TEXT, fill=(0, 0, 0), font=ImageFont.load_default(size=40))
    if path != DET:
        image = image.crop((10, 60, 278, 130))
    resized = np.asarray(
        image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    if path == DET:
        # DBNet's ImageNet normalisation.
        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
        pixels = (resized / 255 - mean) / std
    else:
        pixels = (resized / 255 - 0.5) / 0.5
    assert pixels.shape == (height, width, channels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def _read(probabilities: np.ndarray) -> str:
    """CTC decoding of the recogniser's output with the alphabet in its file."""
    metadata = onnx.load(str(REC), load_external_data=False).metadata_props
    alphabet = next(p.value for p in metadata if p.key == "character").splitlines()
    # Index 0 is the blank, then the file's characters, then a space.
    symbols = ["", *alphabet, " "]
    best = probabilities[0].argmax(axis=1)
    kept = [b for i, b in enumerate(best) if b and (i == 0 or b != best[i - 1])]
    return "".join(symbols[b] for b in kept)


def _session(model: onnx.ModelProto | Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return onnxruntime.InferenceSession(
        source, options, providers=["CPUExecutionProvider"]
    )


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    session = _session(model)
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(output)


def _split_everywhere(path: Path, *, every: int = 1) -> None:
    """Split ``path`` at every ``every``-th valid cut; compare with the file."""
    x = _photo(path)
    graph = OnnxGraph.from_file(path, input_shape=SHAPES[path])
    assert len(graph.cuts) == CUTS[path]
    whole = _run(path, x)
    if path == DET:
        # The text is found where it was drawn (rows 60..130 of 192, 20..43
        # of the map); elsewhere in the photograph much less is.
        found = whole[0, 0] > 0.3
        inside = int(found[20:44].sum())
        assert inside > 100 and inside > 3 * (int(found.sum()) - inside)
    elif path == CLS:
        # The line is upright: class 0 (0 degrees), not 1 (180 degrees).
        assert whole[0, 0] > 0.99
    else:
        assert _read(whole) == TEXT.replace(" ", "")

    for cut in graph.cuts[1:-1:every]:
        head, tail = graph.split(cut.after)
        onnx.checker.check_model(head, full_check=True)
        onnx.checker.check_model(tail)
        middle = _run(head, x)
        assert middle.shape == cut.shape
        assert middle.nbytes == cut.tensor_bytes
        np.testing.assert_allclose(_run(tail, middle), whole, rtol=0, atol=ATOL)


@pytest.mark.parametrize("path", [DET, CLS], ids=["det", "cls"])
def test_ocr_networks_split_at_every_valid_cut_equal_the_whole(path: Path) -> None:
    _split_everywhere(path)


@pytest.mark.slow
def test_ocr_recogniser_splits_at_every_valid_cut() -> None:
    _split_everywhere(REC)


def test_ocr_recogniser_run_stage_by_stage_equals_the_whole() -> None:
    x = _photo(REC)
    model = OnnxStagedModel(REC, input_shape=SHAPES[REC])
    assert model.num_stages == CUTS[REC] - 1
    assert len(set(model.stage_names)) == model.num_stages
    whole = _run(REC, x)

    # Stage by stage, every intermediate equals the whole graph's own tensor
    # at that cut (recorded when the model was analysed), and the tail from
    # every tenth cut on gives the whole output.
    reference = _session_with_outputs(model.graph, x)
    tensor = torch.from_numpy(x)
    for stage in range(model.num_stages):
        if stage % 10 == 0:
            tail = model.run(tensor, stage, model.num_stages).numpy()
            np.testing.assert_allclose(tail, whole, rtol=0, atol=ATOL)
        tensor = model.run(tensor, stage, stage + 1)
        cut = model.graph.cuts[stage + 1]
        np.testing.assert_allclose(
            tensor.numpy(), reference[cut.tensor], rtol=1e-4, atol=1e-4
        )
    np.testing.assert_allclose(tensor.numpy(), whole, rtol=0, atol=ATOL)
    # The recogniser reads 96 pixels as 12 time steps over 6625 symbols;
    # split into its stages it still reads the line (the space between the
    # words is narrower than a time step at this width).
    assert model.output_shape == (1, 12, 6625)
    assert _read(tensor.numpy()) == "SPLIT42"


def _session_with_outputs(graph: OnnxGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every cut tensor of the unsplit graph, from one onnxruntime run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(graph.model)
    names = [cut.tensor for cut in graph.cuts[1:]]
    for name in names[:-1]:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = _session(probe)
    arrays = session.run(names, {graph.input.name: x})
    return dict(zip(names, arrays, strict=True))


def test_a_small_graph_out_of_order_with_constants_and_a_skip(tmp_path: Path) -> None:
    """The rules on a graph small enough to check by hand.

    ``a = relu(x); b = x + a; c = -b; d = c * (k * k); y = sigmoid(d)`` with
    ``k`` a Constant node, written to the file in reverse order.
    """
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Add", ["x", "a"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node(
            "Constant",
            [],
            ["k"],
            value=helper.make_tensor("k", TensorProto.FLOAT, [], [2.0]),
        ),
        helper.make_node("Mul", ["k", "k"], ["k2"]),
        helper.make_node("Mul", ["c", "k2"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes[::-1],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(onnx.load(str(path)))

    analysed = OnnxGraph.from_file(path, input_shape=(4,))
    # The Constant and the Mul of it by itself are constants, not positions.
    assert [node.output[0] for node in analysed.order] == ["a", "b", "c", "d", "y"]
    assert analysed.constants == {"k", "k2"}
    # The input is alive until the Add reads it: no cut between Relu and Add.
    assert analysed.crossing[1] == ("x", "a")
    assert [(cut.index, cut.after, cut.tensor) for cut in analysed.cuts] == [
        (0, "x", "x"), (2, "b", "b"), (3, "c", "c"), (4, "d", "d"), (5, "y", "y"),
    ]  # fmt: skip
    assert [name for name, _, _ in analysed.stage_bounds()] == ["a..b", "c", "d", "y"]
    with pytest.raises(
        ConfigError,
        match=r"2 tensors cross it \(x \[1, 4\], a \[1, 4\]\); nearest valid cuts: "
        r"after x or after b$",
    ):
        analysed.split("a")

    # The tail after c computes its own k * k; the stage reading k owns it.
    head, tail = analysed.split("c")
    assert [node.op_type for node in tail.graph.node] == [
        "Constant",
        "Mul",
        "Mul",
        "Sigmoid",
    ]
    assert [node.op_type for node in head.graph.node] == ["Relu", "Add", "Neg"]
    assert [analysed.param_bytes(s, e) for _, s, e in analysed.stage_bounds()] == [
        0,
        0,
        4,
        0,
    ]
    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    expected = 1 / (1 + np.exp(4 * (x + np.maximum(x, 0))))
    np.testing.assert_allclose(_run(tail, _run(head, x)), expected, atol=1e-6)


def test_a_cut_inside_a_residual_block_of_the_detector_is_refused() -> None:
    graph = OnnxGraph.from_file(DET, input_shape=SHAPES[DET])
    # The first residual add of the backbone: its shortcut (the output of
    # p2o.Add.6) is alive while p2o.Conv.2 and the ops after it run.
    inside = next(
        index for index, values in enumerate(graph.crossing) if len(values) > 1
    )
    after = graph.labels[inside - 1]
    with pytest.raises(ConfigError) as refused:
        graph.split(after)
    message = str(refused.value)
    crossing = graph.crossing[inside]
    assert message.startswith(
        f"cut after {after} in ONNX model {DET} is inside a residual or branching "
        f"structure: {len(crossing)} tensors cross it ("
    )
    for tensor in crossing:
        assert tensor in message
    before = max(cut.index for cut in graph.cuts if cut.index < inside)
    following = min(cut.index for cut in graph.cuts if cut.index > inside)
    assert message.endswith(
        f"nearest valid cuts: after {graph.labels[before - 1]} or after "
        f"{graph.labels[following - 1]}"
    )

    # The decoder's Concat joins four upsampled branches: just before it
    # four tensors cross, and the message names them with their shapes.
    concat = next(i for i, node in enumerate(graph.order) if node.op_type == "Concat")
    assert len(graph.crossing[concat]) == 4
    with pytest.raises(ConfigError, match=r"4 tensors cross it \(.* \[1, 24, 16, 24\]"):
        graph.split(graph.labels[concat - 1])


def _export(module: torch.nn.Module, path: Path) -> Path:
    torch.onnx.export(
        module.eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamo=False,
    )
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_an_exported_resnet_is_cut_where_the_traced_module_is(tmp_path: Path) -> None:
    info = MODELS["resnet20"]
    assert info.module is not None
    torch.manual_seed(0)
    module = info.module(10)
    path = _export(module, tmp_path / "resnet20.onnx")
    graph = OnnxGraph.from_file(path)

    # The stem after conv1 (bn folded in by the exporter) and its ReLU, each
    # block after its add and after its final ReLU, then the head.
    blocks = [f"/layer{i}/layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    assert [cut.after for cut in graph.cuts] == [
        "image", "/conv1/Conv", "/Relu",
        *(f"{block}/{op}" for block in blocks for op in ("Add", "Relu_1")),
        "/GlobalAveragePool", "/Flatten", "/linear/Gemm",
    ]  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"2 tensors cross it \(/Relu_output_0 \[1, 16, 32, 32\], "
        r"/layer1/layer1\.0/conv1/Conv_output_0 \[1, 16, 32, 32\]\); nearest "
        r"valid cuts: after /Relu or after /layer1/layer1\.0/Add$",
    ):
        graph.split("/layer1/layer1.0/conv1/Conv")
    with pytest.raises(ConfigError, match="no node labelled 'conv9'"):
        graph.split("conv9")

    # As a staged model: runs agree with torch, and the stages' parameter
    # bytes add up to the module's (batch norms folded into the convs).
    model = OnnxStagedModel(path, classes=10)
    assert model.classifies and model.output_shape == (1, 10)
    assert model.stage_names[:4] == (
        "conv1",
        "Relu",
        "layer1.layer1.0",
        "layer1.layer1.0_1",
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = module(x)
    for cut in range(model.num_stages + 1):
        head = model.run(x, 0, cut)
        torch.testing.assert_close(
            model.run(head, cut, model.num_stages), expected, rtol=0, atol=ATOL
        )
    # The exporter stores equal tensors once (the zero biases of the convs
    # that fresh batch norms fold into) and copies them with Identity nodes:
    # a stored tensor counts once.  The shortcuts' pads and slices are
    # Constant nodes.
    stored = _stored_bytes(graph.model)
    convs = sum(p.numel() * 4 for n, p in module.named_parameters() if "conv" in n)
    assert stored > convs
    assert sum(model.stage_param_bytes(i) for i in range(model.num_stages)) == stored


def test_profile_counts_the_weights_held_in_constant_nodes() -> None:
    model = OnnxStagedModel(DET, input_shape=SHAPES[DET])
    graph = model.graph
    profile = profile_model(
        model, torch.from_numpy(_photo(DET)), node="here", warmup=1, repeats=2
    )
    assert profile.num_stages == CUTS[DET] - 1 == len(graph.stage_bounds())
    # The detector keeps its 4.7 MB of weights in Constant nodes, not in
    # initializers; every byte is charged to exactly one stage.
    stored = _stored_bytes(graph.model)
    assert sum(stage.param_bytes for stage in profile.stages) == stored == 4_687_364
    assert [stage.output_bytes for stage in profile.stages] == [
        cut.tensor_bytes for cut in graph.cuts[1:]
    ]
    # The probability map is as large as the image: 64x96 floats.
    assert profile.cut_bytes(profile.num_stages) == 64 * 96 * 4
    assert not model.classifies


def _stored_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers and the values of the Constant nodes."""
    tensors = [*model.graph.initializer]
    tensors += [
        attribute.t
        for node in model.graph.node
        if node.op_type == "Constant"
        for attribute in node.attribute
    ]
    return sum(int(onnx.numpy_helper.to_array(t).nbytes) for t in tensors)


def test_missing_invalid_and_mismatched_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "none.onnx"
    with pytest.raises(ConfigError, match=f"^ONNX model {missing} does not exist"):
        load_onnx(missing)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf at all")
    with pytest.raises(ConfigError, match=f"^ONNX model {garbage} cannot be read: "):
        load_onnx(garbage)

    # A node that reads a tensor nothing makes, and an operator that does
    # not exist.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])
    broken = tmp_path / "broken.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["y"], ["z"])], "g", [x], [z])
    onnx.save(helper.make_model(graph), str(broken))
    with pytest.raises(
        ConfigError,
        match=f"^ONNX model {broken}: node Relu reads y, which no node, input or "
        "initializer provides$",
    ):
        load_onnx(broken)
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["z"])], "g", [x], [z]
    )
    onnx.save(helper.make_model(graph), str(broken))
    with pytest.raises(
        ConfigError, match=f"^ONNX model {broken} is not valid ONNX: .*Frobnicate"
    ):
        load_onnx(broken)

    # The recogniser reads lines 48 pixels high; asked for a 4-channel input
    # it is refused with its declared shape.
    with pytest.raises(
        ConfigError,
        match=r"expects input \['p2o\.DynamicDimension\.0', 3, '\?', "
        r"'p2o\.DynamicDimension\.1'\]; it cannot take samples of shape \[4, 48, 96\]",
    ):
        OnnxStagedModel(REC, input_shape=(4, 48, 96))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_fixed_input_size_is_checked_against_the_scenario_images(
    tmp_path: Path,
) -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(
        conv, (torch.zeros(1, 3, 48, 48),), str(path), input_names=["x"], dynamo=False
    )
    model = OnnxStagedModel(path)
    assert model.input_shape == (3, 48, 48)
    with pytest.raises(
        ConfigError,
        match=rf"^ONNX model {path} expects input \[1, 3, 48, 48\]; it cannot take "
        r"samples of shape \[3, 32, 32\]$",
    ):
        OnnxStagedModel(path, input_shape=(3, 32, 32))


def test_scenario_names_a_missing_onnx_file(tmp_path: Path) -> None:
    data = {
        "name": "x",
        "model": str(tmp_path / "absent.onnx"),
        "devices": [
            {"name": "d1", "cpu_share": 1, "link": {"latency_ms": 1, "rate_mbps": 1}}
        ],
    }
    with pytest.raises(ConfigError, match=r"^test: model: ONNX model file .*absent"):
        parse_scenario(data, source="test")
    data["model"] = str(DET)
    assert parse_scenario(data, source="test").model == str(DET)


@pytest.mark.slow
def test_profile_command_prints_the_detector_stages(tmp_path: Path) -> None:
    out = tmp_path / "det.json"
    result = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "profile", str(DET),
         "--input-shape", "3x64x96", "--warmup", "0", "--repeats", "2",
         "--json", str(out)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    profile = json.loads(out.read_text())
    assert len(profile["stages"]) == CUTS[DET] - 1
    assert profile["input_bytes"] == 3 * 64 * 96 * 4
    assert sum(stage["param_bytes"] for stage in profile["stages"]) == 4_687_364

    refused = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "profile", str(tmp_path / "no.onnx")],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 3
    assert f"ONNX model {tmp_path / 'no.onnx'} does not exist" in refused.stderr


MIDDLE_CUTS = """
def middle(problem):
    # d1 sends what crosses after the first pool, d2 its input; d3 runs all.
    return {"d1": 3, "d2": 0, "d3": problem.num_stages}
"""


def _splitlab_run(
    tmp_path: Path, model: Path
) -> tuple[str, RunRecord, list[TaskRecord], dict[str, int], RunSummary]:
    """``splitlab run`` of three devices at cuts 3, 0 and L on ``model``."""
    algorithm = tmp_path / "middle.py"
    algorithm.write_text(MIDDLE_CUTS)
    scenario = {
        "name": "onnx-e2e",
        "seed": 4,
        "model": str(model),
        "algorithm": f"{algorithm}:middle",
        "scheduler": "rr",
        "workload": {"tasks_per_device": 4, "period_ms": 40},
        "profiling": {"warmup": 1, "repeats": 3},
        "devices": [
            {"name": name, "cpu_share": 0.5, "link": {"latency_ms": 2, "rate_mbps": 50}}
            for name in ("d1", "d2", "d3")
        ],
    }
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(yaml.safe_dump(scenario))
    workspace = tmp_path / "ws"
    result = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "run", str(scenario_path),
         "--workspace", str(workspace)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with ResultStore(workspace / "results.sqlite") as store:
        (run,) = store.runs()
        return (
            result.stdout,
            run,
            store.tasks(run.run_id),
            store.cuts(run.run_id),
            summarise(store, run.run_id),
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_an_exported_zoo_model_runs_end_to_end(tmp_path: Path) -> None:
    info = MODELS["cnn-small"]
    assert info.module is not None
    torch.manual_seed(1)
    path = _export(info.module(10), tmp_path / "cnn-small.onnx")
    stdout, run, tasks, cuts, summary = _splitlab_run(tmp_path, path)

    assert "weights of the ONNX file" in stdout
    assert cuts == {"d1": 3, "d2": 0, "d3": 11}
    assert len(tasks) == 12
    assert all(task.matches_unsplit for task in tasks)
    # The ten classes of the data are the output's: an accuracy is reported.
    assert run.test_accuracy is not None and 0 <= run.test_accuracy <= 1
    assert summary.accuracy is not None
    by_device = {task.device: task for task in tasks}
    # After the first pool: 16 channels of 16x16; offloaded: the image.
    assert by_device["d1"].cut_bytes == 16 * 16 * 16 * 4
    assert by_device["d2"].cut_bytes == 3 * 32 * 32 * 4


@pytest.mark.slow
def test_the_ocr_detector_runs_end_to_end_without_an_accuracy(tmp_path: Path) -> None:
    stdout, run, tasks, cuts, summary = _splitlab_run(tmp_path, DET)

    assert "no accuracy" in stdout
    assert cuts == {"d1": 3, "d2": 0, "d3": CUTS[DET] - 1}
    assert len(tasks) == 12
    assert all(task.matches_unsplit for task in tasks)
    # A probability map per 32x32 image, not class scores: no accuracy.
    assert run.test_accuracy is None and summary.accuracy is None
    for task in tasks:
        scores = np.frombuffer(task.logits, dtype=np.float32)
        assert scores.shape == (32 * 32,)
        assert scores.min() >= 0 and scores.max() <= 1
