"""Codecs for the cut tensor: round trips, error bounds, sizes, refusals."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlab.codec import CODECS, decode, encode, parse_codec
from splitlab.data import load_held_out
from splitlab.errors import ConfigError, ProtocolError
from splitlab.experiment import run_scenario
from splitlab.models import build_model
from splitlab.report import run_report_html, summarise
from splitlab.results import ResultStore
from splitlab.scenario import parse_scenario

RNG = np.random.default_rng(7)


def _activations() -> list[np.ndarray]:
    """Every stage's output of a seeded alexnet-small on real MNIST images."""
    torch.manual_seed(0)
    model = build_model("alexnet-small")
    model.eval()
    images = load_held_out("mnist", data_dir=None, test_fraction=0.2, seed=1).images
    outputs = []
    with torch.inference_mode():
        x = torch.tensor(images[:1])
        for stage in model.stages:
            x = stage(x)
            outputs.append(x.numpy().copy())
    return outputs


ACTIVATIONS = _activations()


def test_names_parse_back() -> None:
    assert len(CODECS) == 9
    for name in CODECS:
        assert parse_codec(name).name == name
    assert parse_codec("int8+zstd").compressor == "zstd"
    assert not parse_codec("fp32+lz4").lossy
    assert parse_codec("fp16").lossy


@pytest.mark.parametrize("name", ["int4", "fp32+gzip", "", "fp16+", "+zstd"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown codec"):
        parse_codec(name, field="devices[0].codec")


@pytest.mark.parametrize("name", [c for c in CODECS if c.startswith("fp32")])
def test_fp32_round_trips_exactly(name: str) -> None:
    array = RNG.normal(size=(1, 16, 5, 5)).astype(np.float32)
    header, payload = encode(array, name)
    json.dumps(header)
    out = decode(header, payload)
    assert out.dtype == np.float32
    assert np.array_equal(out, array)


@pytest.mark.parametrize("name", ["fp16", "fp16+zstd", "fp16+lz4"])
def test_fp16_is_within_half_precision(name: str) -> None:
    array = RNG.normal(scale=10, size=(1, 300)).astype(np.float32)
    header, payload = encode(array, name)
    out = decode(header, payload)
    assert len(encode(array, "fp16")[1]) == array.size * 2
    # A half has 11 significant bits: a relative error of at most 2**-11.
    assert np.all(np.abs(out - array) <= np.abs(array) * 2.0**-11 + 1e-7)


@pytest.mark.parametrize("name", ["int8", "int8+zstd", "int8+lz4"])
def test_int8_error_is_at_most_half_a_step(name: str) -> None:
    array = RNG.normal(loc=3.0, scale=2.0, size=(2, 8, 7, 7)).astype(np.float32)
    header, payload = encode(array, name)
    low, high = float(array.min()), float(array.max())
    # The step is the range over 255 levels; the zero point rounds -min/scale.
    assert header["scale"] == pytest.approx((high - low) / 255, rel=1e-12)
    assert header["zero_point"] == round(-low / header["scale"]) - 128
    out = decode(header, payload)
    error = np.abs(out.astype(np.float64) - array.astype(np.float64))
    # float32 output rounding adds at most half an ulp of the largest value.
    slack = np.spacing(np.float32(max(abs(low), abs(high))))
    assert error.max() <= header["scale"] / 2 + slack
    # And the bound is nearly reached: the step is really that coarse.
    assert error.max() > header["scale"] / 4


def test_int8_worked_example() -> None:
    array = np.array([-1.0, 0.0, 0.5, 1.55], dtype=np.float32)
    header, payload = encode(array, "int8")
    scale = 2.55 / 255  # 0.01
    assert header["scale"] == pytest.approx(scale)
    # round(1.0 / 0.01) - 128 = -28: -1.0 maps to -128, 0.0 to -28.
    assert header["zero_point"] == -28
    assert list(np.frombuffer(payload, dtype=np.int8)) == [-128, -28, 22, 127]
    assert np.allclose(decode(header, payload), [-1.0, 0.0, 0.5, 1.55], atol=1e-6)


def test_int8_of_a_constant_tensor_is_exact_for_zero() -> None:
    header, payload = encode(np.zeros((3, 3), dtype=np.float32), "int8")
    assert header["scale"] == 1.0
    assert np.array_equal(decode(header, payload), np.zeros((3, 3)))


def test_int8_refuses_non_finite_values() -> None:
    with pytest.raises(ProtocolError, match="infinite or NaN"):
        encode(np.array([1.0, math.inf], dtype=np.float32), "int8")


@pytest.mark.parametrize("number_format", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("compressor", ["zstd", "lz4"])
def test_compression_shrinks_real_activations(
    number_format: str, compressor: str
) -> None:
    plain = sum(len(encode(a, number_format)[1]) for a in ACTIVATIONS)
    packed = sum(
        len(encode(a, f"{number_format}+{compressor}")[1]) for a in ACTIVATIONS
    )
    assert packed < plain
    for array in ACTIVATIONS:
        header, payload = encode(array, f"{number_format}+{compressor}")
        assert decode(header, payload).shape == array.shape


def test_int8_is_about_a_quarter_of_fp32() -> None:
    fp32 = sum(len(encode(a, "fp32")[1]) for a in ACTIVATIONS)
    int8 = sum(len(encode(a, "int8")[1]) for a in ACTIVATIONS)
    assert int8 * 4 == fp32


def _good() -> tuple[dict[str, object], bytes]:
    return encode(RNG.normal(size=(2, 3)).astype(np.float32), "int8+zstd")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "float64"}, "dtype"),
        ({"dtype": None}, "dtype"),
        ({"shape": [2, 4]}, "needs 8 bytes|does not decompress"),
        ({"shape": [2, -3]}, "shape"),
        ({"shape": "2x3"}, "shape"),
        ({"shape": [2.0, 3]}, "shape"),
        ({"shape": [1] * 33}, "shape"),
        ({"shape": [2**20, 2**20]}, "above the limit"),
        ({"compressor": "gzip"}, "compressor"),
        ({"compressor": None}, "needs 6 bytes"),
        ({"scale": 0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": "1"}, "scale"),
        ({"scale": True}, "scale"),
        ({"zero_point": 1.5}, "zero_point"),
        ({"zero_point": 2**70}, "zero_point"),
    ],
)
def test_corrupt_headers_are_refused(change: dict[str, object], message: str) -> None:
    header, payload = _good()
    with pytest.raises(ProtocolError, match=message):
        decode({**header, **change}, payload)


def test_corrupt_payloads_are_refused() -> None:
    header, payload = _good()
    with pytest.raises(ProtocolError):
        decode(header, payload[:-2])
    header, payload = encode(np.ones((4, 4), dtype=np.float32), "fp32+lz4")
    with pytest.raises(ProtocolError, match="lz4"):
        decode(header, b"\xff" + payload[1:])
    header, payload = encode(np.ones((4, 4), dtype=np.float32), "fp16")
    with pytest.raises(ProtocolError, match="needs 32 bytes"):
        decode(header, payload + b"\0\0")


def test_a_header_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        decode([1, 2], b"")  # type: ignore[arg-type]


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(min_value=-3, max_value=2**40), max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.one_of(
                _VALUES, st.sampled_from(["float32", "float16", "int8"])
            ),
            "shape": _VALUES,
            "scale": _VALUES,
            "zero_point": _VALUES,
            "compressor": st.one_of(_VALUES, st.sampled_from(["zstd", "lz4"])),
        },
    ),
    payload=st.binary(max_size=256),
)
def test_decode_fuzz_only_returns_or_refuses(
    header: dict[str, object], payload: bytes
) -> None:
    try:
        out = decode(header, payload)
    except ProtocolError:
        return
    assert out.dtype == np.float32
    assert out.size * np.dtype(str(header["dtype"])).itemsize <= len(payload) or (
        header.get("compressor") is not None
    )


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, width=32), min_size=1, max_size=64
    ),
    name=st.sampled_from(CODECS),
)
def test_round_trip_fuzz(values: list[float], name: str) -> None:
    array = np.array(values, dtype=np.float32)
    header, payload = encode(array, name)
    out = decode(json.loads(json.dumps(header)), payload)
    if name.startswith("fp32"):
        assert np.array_equal(out, array)
    elif name.startswith("int8"):
        slack = np.spacing(np.float32(np.abs(array).max()))
        assert (
            np.abs(out.astype(np.float64) - array).max() <= header["scale"] / 2 + slack
        )


def _codec_scenario(**changes: Any) -> dict[str, Any]:
    link = {"latency_ms": 1, "rate_mbps": 10}
    data: dict[str, Any] = {
        "name": "c",
        "devices": [
            {"name": "a", "cpu_share": 0.5, "link": link},
            {"name": "b", "cpu_share": 0.5, "codec": "fp16+lz4", "link": link},
        ],
    }
    data.update(changes)
    return data


def test_scenario_codecs_default_override_and_command_line() -> None:
    scenario = parse_scenario(_codec_scenario(), source="s.yaml")
    assert scenario.codec == "fp32"
    assert scenario.device_codec("a") == "fp32"
    assert scenario.device_codec("b") == "fp16+lz4"
    scenario = parse_scenario(_codec_scenario(codec="int8"), source="s.yaml")
    assert [scenario.device_codec(n) for n in "ab"] == ["int8", "fp16+lz4"]
    # run --codec sets every device's codec.
    forced = scenario.with_codec("int8+zstd")
    assert [forced.device_codec(n) for n in "ab"] == ["int8+zstd", "int8+zstd"]


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"codec": "int4"}, "s.yaml: codec: unknown codec 'int4'"),
        (
            {"devices": [{"name": "a", "cpu_share": 1, "codec": "fp32+gzip",
                          "link": {"latency_ms": 1, "rate_mbps": 1}}]},
            "s.yaml: devices[0].codec: unknown codec 'fp32+gzip'",
        ),
    ],
)  # fmt: skip
def test_an_unknown_codec_in_a_scenario_is_named(
    changes: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_scenario(_codec_scenario(**changes), source="s.yaml")


@pytest.mark.slow
def test_a_run_with_int8_zstd_shrinks_the_bytes_and_reports_agreement(
    tmp_path: Path,
) -> None:
    algorithm = tmp_path / "fixed.py"
    algorithm.write_text(
        "def after_conv2(problem):\n"
        "    return {device: 3 for device in problem.devices}\n"
    )
    data: dict[str, Any] = {
        "name": "codec",
        "seed": 2,
        "model": "alexnet-small",
        "training": {"epochs": 1},
        "workload": {"tasks_per_device": 8, "period_ms": 40},
        "profiling": {"warmup": 1, "repeats": 3},
        "algorithm": f"{algorithm}:after_conv2",
        "devices": [
            {"name": "d1", "cpu_share": 0.5,
             "link": {"latency_ms": 2, "rate_mbps": 50}},
            {"name": "d2", "cpu_share": 0.5, "codec": "fp32",
             "link": {"latency_ms": 2, "rate_mbps": 50}},
        ],
    }  # fmt: skip
    fp32 = run_scenario(parse_scenario(data, source="t"), workspace=tmp_path / "ws")
    lossy_scenario = parse_scenario({**data, "codec": "int8+zstd"}, source="t")
    assert lossy_scenario.device_codec("d1") == "int8+zstd"
    assert lossy_scenario.device_codec("d2") == "fp32"
    lossy = run_scenario(lossy_scenario, workspace=tmp_path / "ws")
    assert fp32.status == lossy.status == "completed", (fp32.reason, lossy.reason)

    with ResultStore(lossy.store) as store:
        plain = {t.task_id: t for t in store.tasks(fp32.run_id)}
        packed = {t.task_id: t for t in store.tasks(lossy.run_id)}
        summary = summarise(store, lossy.run_id)
        profiles = store.profiles(lossy.run_id)
        html = run_report_html(store, lossy.run_id)
    # d1 sends conv2's output (16 x 16 x 16 floats here) in int8+zstd: the
    # stored bytes are the encoded ones, under a quarter of float32's.
    for task_id, task in packed.items():
        assert task.cut == 3
        if task.device == "d1":
            assert task.cut_bytes < plain[task_id].cut_bytes / 4
            assert task.matches_unsplit is None and task.max_abs_diff is not None
        else:
            assert task.cut_bytes == plain[task_id].cut_bytes
            assert task.matches_unsplit
    assert profiles["d1"].codec == "int8+zstd"
    assert profiles["d1"].cut_bytes(3) < profiles["d1"].cut_bytes(3, "fp32") / 4
    assert profiles["bs"].cut_bytes(3, "int8+zstd") < profiles["bs"].cut_bytes(3) / 4

    # Lossy tasks are compared, not failed; the fp32 device is checked exactly.
    assert summary.verified == summary.matched == 8
    assert summary.compared == 8
    (check,) = summary.codec_checks
    assert check.codec == "int8+zstd" and check.tasks == 8
    assert check.agreement >= 0.75
    assert abs(check.accuracy_change) <= 0.25
    assert check.max_abs_change > 0
    assert "codec int8+zstd against fp32" in html
    shown = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "summary", str(lossy.run_id),
         "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "codec int8+zstd: 8 tasks against fp32: top-1 agreement" in text
    assert "8 sent in a lossy codec are compared" in text


@pytest.mark.parametrize("name", ["int8", "fp16+zstd", "fp32+lz4"])
def test_token_ids_cross_exactly_in_every_codec(name: str) -> None:
    ids = np.array([[101, 7592, 2088, 30521, 102]], dtype=np.int64)
    header, payload = encode(ids, name)
    assert header["dtype"] == "int64"
    back = decode(header, payload)
    assert back.dtype == np.int64
    assert np.array_equal(back, ids)
