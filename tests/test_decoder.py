"""gpt-tiny: training, KV caches, and split generation over the wire."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitlab.decoder import (
    BLOCKS,
    WIDTH,
    Decoder,
    DeviceHalf,
    StationHalf,
    ensure_decoder,
    generate_split,
    generate_whole,
    load_decoder,
)
from splitlab.errors import ConfigError
from splitlab.scenario import parse_scenario
from splitlab.wire import PREFIX_BYTES, TAG_BYTES

pytestmark = pytest.mark.slow
SECRET = b"decoder-test-secret-0123456789ab"
PROMPT = "The dataset contains "


@functools.cache
def _model() -> Decoder:
    # Trained once per session into the session's cache (about a minute).
    return load_decoder(ensure_decoder(seed=1).path)


def test_training_is_cached_and_learns_the_text() -> None:
    first = ensure_decoder(seed=1)
    again = ensure_decoder(seed=1)
    assert not again.trained_now and again.path == first.path
    assert again.loss == pytest.approx(first.loss)
    # A uniform guess over the characters costs ln(81) = 4.4 nats.
    assert first.loss < 2.5
    text = _model().decode(generate_whole(_model(), PROMPT, 60))
    words = [word for word in text.split() if word.isalpha()]
    assert len(words) >= 5 and {"the", "data", "and", "of"} & set(words)


def test_kv_cached_generation_equals_recomputing_the_whole_sequence() -> None:
    model = _model()
    ids = model.encode(PROMPT)
    recomputed = []
    with torch.inference_mode():
        for _ in range(40):
            token = int(model(ids)[0, -1].argmax())
            recomputed.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert generate_whole(model, PROMPT, 40) == recomputed


@pytest.mark.parametrize("cut", range(BLOCKS + 1))
def test_split_generation_gives_the_whole_models_tokens(cut: int) -> None:
    model = _model()
    tokens = 40
    result = generate_split(model, PROMPT, cut=cut, tokens=tokens, secret=SECRET)
    assert [t.token for t in result.tokens] == generate_whole(model, PROMPT, tokens)
    assert result.text == model.decode(generate_whole(model, PROMPT, tokens))

    # The prompt crosses once; after it, one hidden vector a token, whatever
    # the position: the KV caches never cross the cut.
    def frame_bytes(positions: int) -> int:
        header = json.dumps(
            {"tensor": {"dtype": "float32", "shape": [1, positions, WIDTH]}},
            separators=(",", ":"),
        )
        return PREFIX_BYTES + len(header) + 4 * WIDTH * positions + TAG_BYTES

    assert result.tokens[0].positions == len(PROMPT)
    assert result.tokens[0].sent_bytes == frame_bytes(len(PROMPT))
    assert {t.sent_bytes for t in result.tokens[1:]} == {frame_bytes(1)} == {357}
    assert all(t.positions == 1 for t in result.tokens[1:])


def test_each_side_keeps_only_its_own_blocks_caches() -> None:
    model = _model()
    device, station = DeviceHalf(model, 1), StationHalf(model, 1)
    ids = model.encode(PROMPT)
    with torch.inference_mode():
        for _ in range(5):
            token = station.step(device.step(ids))
            ids = torch.tensor([[token]])
    assert len(device.caches) == 1 and len(station.caches) == BLOCKS - 1
    positions = len(PROMPT) + 4
    assert all(c.length == positions for c in device.caches + station.caches)


def test_bad_cuts_prompts_and_scenarios_are_refused() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="cut 5 is outside 0..4"):
        generate_split(model, PROMPT, cut=5, tokens=3, secret=SECRET)
    with pytest.raises(ConfigError, match="never saw"):
        generate_split(model, "\u00e9t\u00e9 ", cut=1, tokens=3, secret=SECRET)
    with pytest.raises(ConfigError, match="must fit"):
        generate_split(model, PROMPT, cut=1, tokens=1000, secret=SECRET)
    with pytest.raises(ConfigError, match="secret has 5 bytes"):
        generate_split(model, PROMPT, cut=1, tokens=3, secret=b"short")
    with pytest.raises(ConfigError, match="splitlab generate"):
        parse_scenario(
            {"name": "g", "model": "gpt-tiny", "devices": [
                {"name": "d", "cpu_share": 1, "link": {"latency_ms": 1,
                                                      "rate_mbps": 1}}]},
            source="g.yaml",
        )  # fmt: skip


def test_the_cli_prints_text_times_and_bytes(weights_cache: Path) -> None:
    _model()
    completed = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "generate", "--cut", "2",
         "--tokens", "12", PROMPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160", "SPLITLAB_CACHE": str(weights_cache)},
        check=True,
    )  # fmt: skip
    expected = _model().decode(generate_whole(_model(), PROMPT, 12))
    assert PROMPT + expected in completed.stdout
    assert "cut after block 2" in completed.stdout
    assert completed.stdout.count("\n") > 12
    assert "bytes sent: the prompt 5478, each later token 357" in " ".join(
        completed.stdout.split()
    )
