"""Checking split inference against the whole model.

Every recorded task's logits came from a head on a device and a tail on the
base station (or the whole model on one of them).  Verification runs the
unsplit model on the same input and compares: a classifier's logits must
agree to float rounding and give the same class; an encoder's embedding
must point the same way (cosine similarity above :data:`MIN_COSINE`).  The
station verifies at the end of a run; if the station died first, the
testbed verifies what was recorded.

A task whose cut tensor crossed in a lossy codec (``fp16``, ``int8``...) is
not held to equality: it is compared with the float32 model, and the run
records per codec the top-1 agreement, the accuracy change (accuracy with
the codec minus accuracy in float32 on the same inputs) and the largest
absolute and relative change of an output (:class:`~splitlab.results.CodecCheck`).
A task that ran whole on its device sent no cut tensor and is checked exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from splitlab.codec import DEFAULT_CODEC, parse_codec
from splitlab.data import Samples
from splitlab.models import StagedModel
from splitlab.results import CodecCheck, ResultStore

# Split and whole-model logits may differ by float rounding only.
LOGIT_RTOL = 1e-4
LOGIT_ATOL = 1e-5
# Split and whole-model embeddings of the same sentence.
MIN_COSINE = 0.99999


@dataclass(frozen=True, slots=True)
class Verification:
    """What verifying a run's tasks found.

    Attributes
    ----------
    total:
        Tasks checked exactly (float32 all the way).
    matched:
        Of those, tasks whose split output equals the unsplit model's.
    accuracy:
        Share of all checked tasks whose class equals the label, or ``None``
        (no tasks, or a model whose output is not one score per class).
    max_abs_diff:
        The largest difference of a logit between split and unsplit, over
        the tasks checked exactly.
    min_cosine:
        For an encoder, the lowest cosine similarity of a split embedding to
        the unsplit one; ``None`` for a classifier.
    codec_checks:
        One comparison per lossy codec, for the tasks sent in it.
    """

    total: int
    matched: int
    accuracy: float | None
    max_abs_diff: float
    min_cosine: float | None = None
    codec_checks: tuple[CodecCheck, ...] = ()


def verify_run(
    store: ResultStore,
    run_id: int,
    *,
    model: StagedModel,
    data: Samples,
    codecs: Mapping[str, str] | None = None,
) -> Verification:
    """Check every task of ``run_id`` not yet verified and record the outcome.

    ``codecs`` gives each device's codec (``fp32`` for a device left out).
    """
    tasks = [
        task
        for task in store.tasks(run_id)
        if task.matches_unsplit is None and task.max_abs_diff is None
    ]
    results: list[tuple[int, bool | None, float]] = []
    checks: dict[str, CodecCheck] = {}
    exact_diffs: list[float] = []
    correct = 0
    cosines = []
    embedding = model.output_kind == "embedding"
    model.eval()
    with torch.inference_mode():
        for task in tasks:
            sample = torch.from_numpy(data.sample(task.sample))
            whole = model(sample).numpy().reshape(-1)
            split = np.frombuffer(task.logits, dtype=np.float32)
            difference = float(np.max(np.abs(whole - split)))
            correct += int(task.prediction == task.label)
            if embedding:
                cosines.append(cosine(split, whole))
            codec = parse_codec((codecs or {}).get(task.device, DEFAULT_CODEC))
            if codec.lossy and task.cut < model.num_stages:
                results.append((task.task_id, None, difference))
                scale = float(np.max(np.abs(whole)))
                check = CodecCheck(
                    codec=codec.name,
                    tasks=1,
                    agreed=int(int(np.argmax(whole)) == task.prediction),
                    correct=int(task.prediction == task.label),
                    correct_fp32=int(int(np.argmax(whole)) == task.label),
                    max_abs_change=difference,
                    max_relative_change=difference / scale if scale > 0 else 0.0,
                )
                earlier = checks.get(codec.name)
                checks[codec.name] = check if earlier is None else earlier.merged(check)
                continue
            if embedding:
                same = cosines[-1] > MIN_COSINE
            else:
                # The class must agree too, where the output is one score per
                # class; the largest of a detector's scores means nothing.
                same = bool(
                    np.allclose(split, whole, rtol=LOGIT_RTOL, atol=LOGIT_ATOL)
                    and (
                        not model.classifies or int(np.argmax(whole)) == task.prediction
                    )
                )
            results.append((task.task_id, same, difference))
            exact_diffs.append(difference)
    store.record_verification(run_id, results)
    for check in checks.values():
        store.record_codec_check(run_id, check)
    return Verification(
        total=len(exact_diffs),
        matched=sum(1 for _, same, _ in results if same),
        # An embedding has no class, so a label cannot be right or wrong.
        accuracy=(
            correct / len(results)
            if results and model.classifies and not embedding
            else None
        ),
        max_abs_diff=max(exact_diffs, default=0.0),
        min_cosine=min(cosines, default=1.0) if embedding else None,
        codec_checks=tuple(checks[name] for name in sorted(checks)),
    )


def cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Cosine similarity of two vectors, computed in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64) / norms if norms else 0.0
