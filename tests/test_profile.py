"""Profiles: FLOPs, peak activation memory, bytes per codec, and memory-aware cuts."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from splitlab.codec import encode
from splitlab.data import load_held_out
from splitlab.errors import ConfigError
from splitlab.footprint import measure_stage
from splitlab.link import LinkSpec
from splitlab.models import build_model
from splitlab.plan import FixedScheme, PlanningProblem, make_plan
from splitlab.profile import (
    NodeProfile,
    StageProfile,
    profile_from_dict,
    profile_model,
    profile_to_dict,
)
from splitlab.results import ResultStore
from splitlab.workload import TaskSpec


def test_flops_and_peak_memory_of_a_linear_layer() -> None:
    with torch.inference_mode():
        flops, peak_bytes, output = measure_stage(
            nn.Linear(100, 10), torch.zeros(1, 100)
        )
    # 100 x 10 multiply-accumulates, two FLOPs each; input 400 B + output 40 B.
    assert flops == 2 * 100 * 10
    assert peak_bytes == 400 + 40
    assert output.shape == (1, 10)


def test_peak_memory_follows_what_is_alive() -> None:
    x = torch.zeros(1, 3, 8, 8)  # 768 B
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.inference_mode():
        # Conv output (2048 B) is still alive while ReLU writes its own.
        flops, peak, _ = measure_stage(nn.Sequential(conv, nn.ReLU()), x)
        _, in_place_peak, _ = measure_stage(nn.Sequential(conv, nn.ReLU(True)), x)
        _, view_peak, _ = measure_stage(nn.Flatten(), x)
    # 8 x 8 outputs x 8 channels x 3 x 3 x 3 weights, two FLOPs each.
    assert flops == 2 * 8 * 8 * 8 * 27
    assert peak == 768 + 2048 + 2048
    assert in_place_peak == 768 + 2048
    # A view of the input allocates nothing.
    assert view_peak == 768


@pytest.fixture(scope="module")
def measured() -> tuple[NodeProfile, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model("alexnet-small").eval()
    images = load_held_out("mnist", data_dir=None, test_fraction=0.2, seed=1).images
    sample = torch.tensor(images[:1])
    profile = profile_model(
        model, sample, node="n", warmup=1, repeats=3, codec="int8+zstd",
        codecs=("fp16", "fp32+lz4"),
    )  # fmt: skip
    outputs = [sample]
    with torch.inference_mode():
        for stage in model.stages:
            outputs.append(stage(outputs[-1]))
    return profile, outputs


def test_bytes_per_codec_are_the_encoded_activations(
    measured: tuple[NodeProfile, list[torch.Tensor]],
) -> None:
    profile, outputs = measured
    assert profile.codec == "int8+zstd"
    for cut, tensor in enumerate(outputs):
        array = tensor.numpy()
        for codec in ("fp32", "fp16", "fp32+lz4", "int8+zstd"):
            assert profile.cut_bytes(cut, codec) == len(encode(array, codec)[1])
        # The node's own codec is what the planner counts.
        assert profile.cut_bytes(cut) == profile.cut_bytes(cut, "int8+zstd")
        assert profile.cut_bytes(cut, "fp16") * 2 == array.nbytes
    # A codec not measured falls back to the float32 size.
    assert profile.cut_bytes(1, "int8") == outputs[1].numel() * 4


def test_stage_figures_are_filled_and_survive_json_and_the_store(
    measured: tuple[NodeProfile, list[torch.Tensor]], tmp_path: Path
) -> None:
    profile, _ = measured
    conv1 = profile.stages[0]
    # conv1 of alexnet-small: 3 -> 16 channels, 3x3, on 32x32 (see models).
    assert conv1.flops > 0 and conv1.peak_activation_bytes > conv1.output_bytes
    pools = [stage for stage in profile.stages if stage.name.startswith("pool")]
    assert all(stage.flops == 0 for stage in pools)
    assert profile.head_peak_activation_bytes(0) == 0
    assert profile.head_peak_activation_bytes(profile.num_stages) == max(
        stage.peak_activation_bytes for stage in profile.stages
    )
    assert profile_from_dict(json.loads(json.dumps(profile_to_dict(profile)))) == (
        profile
    )
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_id = store.create_run(
            name="t", scenario_yaml="name: t", scenario_hash="h", seed=1,
            algorithm="greedy", scheduler="fcfs", environment={},
        )  # fmt: skip
        store.record_profile(run_id, profile)
        assert store.profiles(run_id)["n"] == profile


def _toy(node: str, peaks: tuple[int, int]) -> NodeProfile:
    # Two stages: 100 B and 1000 B of weights, 64 B and 8 B outputs; int8
    # shrinks the first stage's output to 16 B.
    return NodeProfile(
        node=node,
        model="toy",
        input_bytes=64,
        stages=(
            StageProfile("s1", 1.0, 1.0, 64, 100, peak_activation_bytes=peaks[0],
                         codec_bytes={"int8": 16}),
            StageProfile("s2", 2.5, 2.5, 8, 1000, peak_activation_bytes=peaks[1]),
        ),
        codec="int8",
    )  # fmt: skip


def _problem(memory_bytes: int, peaks: tuple[int, int]) -> PlanningProblem:
    return PlanningProblem(
        device_profiles={"a": _toy("a", peaks)},
        bs_profile=_toy("bs", (0, 0)),
        links={"a": LinkSpec(latency_s=0.0, rate_bps=128.0)},
        tasks=(TaskSpec(task_id=0, device="a", index=0, arrival_s=0.0, sample=0),),
        scheduler="fcfs",
        workers=1,
        device_memory_bytes={"a": memory_bytes},
    )


def test_a_cut_needs_room_for_weights_and_peak_activations() -> None:
    # k=1: 100 B weights + 500 B peak = 600; k=2: 1100 + max(500, 300) = 1600.
    assert _problem(2000, (500, 300)).allowed_cuts("a") == (0, 1, 2)
    # 1200 B holds k=2's weights (1100) but not its activations too.
    assert _problem(1200, (500, 300)).allowed_cuts("a") == (0, 1)
    assert _problem(599, (500, 300)).allowed_cuts("a") == (0,)
    # Without measured activations only the weights count, as before.
    assert _problem(1200, (0, 0)).allowed_cuts("a") == (0, 1, 2)
    for algorithm in ("greedy", "exact", "neurosurgeon", "annealing", "genetic"):
        assert make_plan(algorithm, _problem(1200, (500, 300))).cuts["a"] in (0, 1)
    with pytest.raises(
        ConfigError,
        match=r"cut 2, whose head needs 1600 bytes \(weights 1100, peak "
        r"activations 500\) but device_memory_bytes is 1200",
    ):
        make_plan("local-only", _problem(1200, (500, 300)))


def test_the_transmission_term_uses_the_device_codec() -> None:
    problem = _problem(10_000, (0, 0))
    # At k=1 the device sends 16 B in int8: 16 * 8 / 128 = 1 s on the link.
    at_one = make_plan(FixedScheme({"a": 1}), problem).predictions[0]
    assert at_one.transmission_s == pytest.approx(1.0)
    # The same profile counted in float32 sends 64 B: 4 s.
    fp32 = replace(problem.device_profiles["a"], codec="fp32")
    problem = replace(problem, device_profiles={"a": fp32})
    assert make_plan(FixedScheme({"a": 1}), problem).predictions[
        0
    ].transmission_s == pytest.approx(4.0)


def test_profile_command_prints_writes_json_and_plots(tmp_path: Path) -> None:
    json_path, png_path = tmp_path / "p.json", tmp_path / "p.png"
    result = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "profile", "alexnet-small",
         "--repeats", "3", "--warmup", "1", "--codec", "fp32", "--codec",
         "int8+zstd", "--json", str(json_path), "--plot", str(png_path)],
        capture_output=True, text=True, timeout=180, env=None,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for header in ("MFLOPs", "param bytes", "peak act. bytes", "int8+zstd", "conv1"):
        assert header in result.stdout
    data = json.loads(json_path.read_text())
    assert len(data["stages"]) == 11
    assert all(set(s["codec_bytes"]) == {"fp32", "int8+zstd"} for s in data["stages"])
    assert data["stages"][0]["flops"] > 0
    assert png_path.read_bytes().startswith(b"\x89PNG")
