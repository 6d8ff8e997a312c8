"""Training once, then loading from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitlab.data import load_held_out
from splitlab.errors import ConfigError
from splitlab.models import build_model
from splitlab.weights import ensure_weights, evaluate, load_trained, load_weights


@pytest.mark.slow
def test_weights_are_trained_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    options = {
        "dataset": "mnist", "data_dir": None, "epochs": 1, "test_fraction": 0.2,
        "seed": 5, "root": tmp_path,
    }  # fmt: skip
    first = ensure_weights("alexnet-small", **options)  # type: ignore[arg-type]
    assert first.trained_now
    assert first.path.is_file()
    # One epoch on 4000 real digits is far better than the 10% of chance.
    assert first.test_accuracy > 0.4

    second = ensure_weights("alexnet-small", **options)  # type: ignore[arg-type]
    assert not second.trained_now
    assert second.path == first.path
    assert second.test_accuracy == pytest.approx(first.test_accuracy, abs=1e-6)

    # A damaged cache file is trained anew rather than trusted.
    first.path.write_bytes(first.path.read_bytes()[:1000])
    third = ensure_weights("alexnet-small", **options)  # type: ignore[arg-type]
    assert third.trained_now
    assert third.test_accuracy == pytest.approx(first.test_accuracy, abs=1e-6)

    # The cached file reproduces the accuracy it was stored with.
    model = load_trained("alexnet-small", second.path, classes=10)
    held_out = load_held_out("mnist", data_dir=None, test_fraction=0.2, seed=5)
    assert evaluate(model, held_out) == pytest.approx(first.test_accuracy, abs=1e-6)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"stages.0.0.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ConfigError, match="do not fit alexnet-small"):
        load_weights(build_model("alexnet-small"), path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read weights"):
        load_weights(build_model("alexnet-small"), tmp_path / "junk.safetensors")
