"""Checking split inference against the whole model.

Every recorded task's logits came from a head on a device and a tail on the
base station (or the whole model on one of them).  Verification runs the
unsplit model on the same input and compares: the outputs must agree to
float rounding and give the same class.  The station verifies at the end of
a run; if the station died first, the testbed verifies what was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from splitlab.data import Dataset
from splitlab.models import StagedModel
from splitlab.results import ResultStore

# Split and whole-model logits may differ by float rounding only.
LOGIT_RTOL = 1e-4
LOGIT_ATOL = 1e-5


@dataclass(frozen=True, slots=True)
class Verification:
    """What verifying a run's tasks found.

    Attributes
    ----------
    total:
        Tasks checked.
    matched:
        Tasks whose split output equals the unsplit model's.
    accuracy:
        Share of checked tasks whose class equals the label, or ``None``
        (no tasks, or a model whose output is not one score per class).
    max_abs_diff:
        The largest difference of a logit between split and unsplit.
    """

    total: int
    matched: int
    accuracy: float | None
    max_abs_diff: float


def verify_run(
    store: ResultStore, run_id: int, *, model: StagedModel, data: Dataset
) -> Verification:
    """Check every task of ``run_id`` not yet verified and record the outcome."""
    tasks = [task for task in store.tasks(run_id) if task.matches_unsplit is None]
    results = []
    correct = 0
    model.eval()
    with torch.inference_mode():
        for task in tasks:
            sample = torch.tensor(data.images[task.sample][None])
            whole = model(sample).numpy().reshape(-1)
            split = np.frombuffer(task.logits, dtype=np.float32)
            difference = float(np.max(np.abs(whole - split)))
            # The class must agree too, where the output is one score per
            # class; the largest of a detector's scores means nothing.
            same = bool(
                np.allclose(split, whole, rtol=LOGIT_RTOL, atol=LOGIT_ATOL)
                and (not model.classifies or int(np.argmax(whole)) == task.prediction)
            )
            results.append((task.task_id, same, difference))
            correct += int(task.prediction == task.label)
    store.record_verification(run_id, results)
    return Verification(
        total=len(results),
        matched=sum(1 for _, same, _ in results if same),
        accuracy=correct / len(results) if results and model.classifies else None,
        max_abs_diff=max((diff for *_, diff in results), default=0.0),
    )
