"""Trained weights for the bundled models, cached in the user's cache folder.

The first run of a scenario trains its model on the scenario's real images
and stores the weights as safetensors with the test accuracy in the file's
metadata; later runs load the file at once.  An ONNX model is never trained:
its weights are the file itself.  A model with published weights
(``ModelInfo.pretrained``, MiniLM) is never trained either: its weights are
renamed to the stages' parameter names once and cached the same way.

A user model (``model: FILE.py:FACTORY``) may bring its own weights
(``weights: PATH``): a safetensors file, or a PyTorch state dict saved with
``torch.save`` and read with ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only.  :func:`import_weights` checks
them against the module the factory builds, renames them to the staged
model's parameters and caches them like trained weights, so every node
loads the same safetensors file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitlab.data import Dataset, load_splits
from splitlab.errors import ConfigError
from splitlab.models import MODELS, StagedModel, build_model
from splitlab.usercode import is_onnx_file

logger = logging.getLogger(__name__)

BATCH_SIZE = 64
LEARNING_RATE = 2e-4


@dataclass(frozen=True, slots=True)
class TrainedWeights:
    """Where a model's weights are and how good they are.

    Attributes
    ----------
    path:
        The safetensors file (for an ONNX model, the ONNX file).
    test_accuracy:
        Accuracy on the held-out part of the data set when trained; ``None``
        for an ONNX model whose output is not one score per class, and for
        published weights, which splitlab does not train.
    trained_now:
        True if this call trained them, False if they came from the cache.
    train_s:
        Time spent training (zero when loaded from the cache), in seconds.
    """

    path: Path
    test_accuracy: float | None
    trained_now: bool
    train_s: float


def cache_dir() -> Path:
    """``$SPLITLAB_CACHE``, else ``$XDG_CACHE_HOME/splitlab``, else ``~/.cache``."""
    if explicit := os.environ.get("SPLITLAB_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "splitlab"


def weights_path(
    model: str,
    dataset: str,
    *,
    data_dir: Path | None = None,
    epochs: int,
    seed: int,
    root: Path | None = None,
) -> Path:
    """The cache file for one model trained one way on one data set.

    A data set read from a folder is told apart by the folder's absolute path,
    so two CIFAR-10 copies never share weights.
    """
    tag = dataset
    if "/" in model or ":" in model:
        # A user's FILE.py:FACTORY: named by its file's stem and a hash of the
        # whole reference, so the cache stays one flat folder.
        source, _, factory = model.rpartition(":")
        digest = hashlib.sha256(model.encode()).hexdigest()[:10]
        model = f"{Path(source).stem}.{factory}-{digest}"
    if data_dir is not None:
        where = str(data_dir.resolve()).encode()
        tag += "-" + hashlib.sha256(where).hexdigest()[:10]
    folder = (root or cache_dir()) / "weights"
    return folder / f"{model}-{tag}-e{epochs}-s{seed}.safetensors"


def _cached(path: Path) -> float | None:
    """The test accuracy stored with a readable cache file, else ``None``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return float(metadata["test_accuracy"])
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        logger.warning("cached weights %s are unreadable (%s); training anew",
                       path, error)  # fmt: skip
        return None


def evaluate(model: StagedModel, data: Dataset, *, batch: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(data.labels), batch):
            images = torch.tensor(data.images[start : start + batch])
            labels = torch.tensor(data.labels[start : start + batch])
            correct += int((model(images).argmax(dim=1) == labels).sum())
    return correct / len(data.labels)


def train(
    model: StagedModel,
    train_set: Dataset,
    *,
    epochs: int,
    seed: int,
    progress: bool,
) -> None:
    """Train ``model`` in place with Adam and cross-entropy."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    images = torch.tensor(train_set.images)
    labels = torch.tensor(train_set.labels)
    steps = epochs * -(-len(labels) // BATCH_SIZE)
    model.train()
    # A bar only on a terminal: piped output would fill with redraws.
    with tqdm(
        total=steps,
        desc=f"training {model.model_name}",
        disable=None if progress else True,
        unit="batch",
    ) as bar:
        for _ in range(epochs):
            permutation = torch.from_numpy(order.permutation(len(labels)))
            for start in range(0, len(labels), BATCH_SIZE):
                batch = permutation[start : start + BATCH_SIZE]
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    model(images[batch]), labels[batch]
                )
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    model.eval()


def load_weights(model: StagedModel, path: Path) -> None:
    """Load a weights file into ``model``, checking every tensor matches.

    The file is safetensors, or an ``.npz`` of plain arrays written by
    :func:`write_npz_weights` (read without pickle).
    """
    if path.suffix == ".npz":
        state = _read_npz_weights(path)
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (OSError, ValueError, SafetensorError) as error:
            raise ConfigError(f"cannot read weights {path}: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(
            f"weights {path} do not fit {model.model_name}: {first}"
        ) from None
    model.eval()


def write_npz_weights(source: Path, target: Path) -> None:
    """Copy a safetensors weights file to an ``.npz`` of plain arrays.

    A board reads the copy with numpy alone, without the safetensors package.
    """
    from safetensors.torch import load_file

    state = load_file(str(source))
    arrays: dict[str, Any] = {name: t.numpy() for name, t in state.items()}
    np.savez(target, allow_pickle=False, **arrays)


def _read_npz_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as entries:
            return {name: torch.from_numpy(entries[name]) for name in entries.files}
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read weights {path}: {error}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a ``torch.save``'d state dict.

    A file whose name ends in ``.safetensors`` is read as safetensors; any
    other with ``torch.load(weights_only=True)``.  A checkpoint that keeps
    its state dict under ``"state_dict"`` is unwrapped, and the ``module.``
    prefix that ``nn.DataParallel`` puts on every name is removed.

    Raises
    ------
    ConfigError
        Naming the ``weights`` field and the path, if the file is missing,
        unreadable, or not a mapping of names to tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"weights: {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"weights: cannot read {path}: {type(error).__name__}: {first}"
        ) from None
    except Exception as error:
        # torch.load refuses anything but tensors and plain containers with
        # an UnpicklingError (or whatever the refused object's loader raises).
        raise ConfigError(
            f"weights: {path} is not a plain state dict: {type(error).__name__}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in state.items()
    ):
        raise ConfigError(
            f"weights: {path} holds a {type(state).__name__}, not a mapping of "
            "parameter names to tensors"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def import_weights(
    model_name: str,
    source: Path,
    *,
    dataset: str,
    data_dir: Path | None,
    test_fraction: float,
    seed: int,
    root: Path | None = None,
) -> TrainedWeights:
    """Check a user model's own weights and cache them for the run's nodes.

    The weights are keyed by the source module's parameter names (what
    ``module.state_dict()`` gives); they are renamed to the staged model's
    and stored as safetensors, with the accuracy on the held-out data.

    Raises
    ------
    ConfigError
        Naming the ``weights`` field and the path, if the file is missing or
        unreadable, or its names or shapes do not match the model's (the
        first few of each are named); and whatever building the model
        raises (see :func:`splitlab.models.build_model`).
    """
    from safetensors.torch import save_file

    from splitlab.graph import staged_state_dict

    source_state = read_state_dict(source)
    _, test_set = load_splits(
        dataset, data_dir=data_dir, test_fraction=test_fraction, seed=seed
    )
    model = build_model(model_name, classes=len(test_set.classes))
    try:
        state = staged_state_dict(model, source_state)
    except ConfigError as error:
        raise ConfigError(f"weights: {source}: {error}") from None
    expected = model.state_dict()
    wrong = [
        f"{key} {list(value.shape)} (model {list(expected[key].shape)})"
        for key, value in state.items()
        if value.shape != expected[key].shape
    ]
    if wrong:
        raise ConfigError(
            f"weights: {source}: {len(wrong)} tensors have the wrong shape: "
            f"{', '.join(wrong[:3])}"
        )
    model.load_state_dict(state, strict=True)
    accuracy = evaluate(model, test_set)

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    reference = weights_path(
        model_name, dataset, data_dir=data_dir, epochs=0, seed=seed, root=root
    )
    path = reference.with_name(reference.stem + f"-{digest}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    metadata = {
        "model": model_name,
        "dataset": dataset,
        "source": str(source.resolve()),
        "test_accuracy": f"{accuracy:.6f}",
        "test_samples": str(len(test_set.labels)),
    }
    tensors = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    logger.info("imported weights %s for %s, test accuracy %.4f",
                source, model_name, accuracy)  # fmt: skip
    return TrainedWeights(path, accuracy, trained_now=False, train_s=0.0)


def ensure_weights(
    model_name: str,
    *,
    dataset: str,
    data_dir: Path | None,
    epochs: int,
    test_fraction: float,
    seed: int,
    progress: bool = False,
    root: Path | None = None,
) -> TrainedWeights:
    """Return cached weights for ``model_name`` on ``dataset``, training if absent.

    Training uses the training part of :func:`splitlab.data.load_splits` and
    reports the accuracy on its held-out part.  An ONNX model's weights are
    its file; it is only evaluated.
    """
    if is_onnx_file(model_name):
        return _onnx_weights(
            model_name, dataset=dataset, data_dir=data_dir,
            test_fraction=test_fraction, seed=seed,
        )  # fmt: skip
    if model_name in MODELS and MODELS[model_name].pretrained is not None:
        return _published_weights(model_name, root=root)
    path = weights_path(
        model_name, dataset, data_dir=data_dir, epochs=epochs, seed=seed, root=root
    )
    accuracy = _cached(path)
    if accuracy is not None:
        logger.info("using cached weights %s", path)
        return TrainedWeights(path, accuracy, trained_now=False, train_s=0.0)

    train_set, test_set = load_splits(
        dataset, data_dir=data_dir, test_fraction=test_fraction, seed=seed
    )
    # Seeded before the weights are initialised, so a seed names one model.
    torch.manual_seed(seed)
    model = build_model(model_name, classes=len(train_set.classes))
    started_s = time.perf_counter()
    train(model, train_set, epochs=epochs, seed=seed, progress=progress)
    train_s = time.perf_counter() - started_s
    accuracy = evaluate(model, test_set)

    # Write to a temporary name first so an interrupted run never leaves a
    # truncated file that a later run would trust.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    metadata = {
        "model": model_name,
        "dataset": dataset,
        "epochs": str(epochs),
        "seed": str(seed),
        "test_accuracy": f"{accuracy:.6f}",
        "train_samples": str(len(train_set.labels)),
        "test_samples": str(len(test_set.labels)),
    }
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(partial), metadata=metadata)
    partial.replace(path)
    logger.info(
        "trained %s in %.1f s, test accuracy %.4f", model_name, train_s, accuracy
    )
    return TrainedWeights(path, accuracy, trained_now=True, train_s=train_s)


def _onnx_weights(
    model_name: str,
    *,
    dataset: str,
    data_dir: Path | None,
    test_fraction: float,
    seed: int,
) -> TrainedWeights:
    """An ONNX file as weights, with its accuracy if it classifies the data."""
    _, test_set = load_splits(
        dataset, data_dir=data_dir, test_fraction=test_fraction, seed=seed
    )
    model = build_model(model_name, classes=len(test_set.classes))
    accuracy = None
    if model.classifies:
        # A file exported for batches of one takes nothing larger.
        accuracy = evaluate(model, test_set, batch=1)
        logger.info("%s: test accuracy %.4f", model_name, accuracy)
    return TrainedWeights(
        Path(model_name).resolve(), accuracy, trained_now=False, train_s=0.0
    )


def _published_weights(model_name: str, *, root: Path | None) -> TrainedWeights:
    """Cache a pretrained model's weights under its stages' names, once."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = (root or cache_dir()) / "weights" / f"{model_name}-pretrained.safetensors"
    if path.is_file():
        try:
            load_file(str(path))
            logger.info("using cached weights %s", path)
            return TrainedWeights(path, None, trained_now=False, train_s=0.0)
        except (OSError, ValueError, SafetensorError) as error:
            logger.warning("cached weights %s are unreadable (%s); renaming anew",
                           path, error)  # fmt: skip
    pretrained = MODELS[model_name].pretrained
    assert pretrained is not None
    state = pretrained()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(state, str(partial), metadata={"model": model_name, "trained": "no"})
    partial.replace(path)
    logger.info("cached the published weights of %s in %s", model_name, path)
    return TrainedWeights(path, None, trained_now=False, train_s=0.0)


def load_trained(model_name: str, path: Path, *, classes: int) -> StagedModel:
    """Build ``model_name`` and load its weights from ``path``.

    For an ONNX model ``path`` is the file itself.
    """
    if is_onnx_file(model_name):
        from splitlab.onnxgraph import OnnxStagedModel

        return OnnxStagedModel(
            path, threads=torch.get_num_threads(), classes=classes, name=model_name
        )
    model = build_model(model_name, classes=classes)
    load_weights(model, path)
    return model
