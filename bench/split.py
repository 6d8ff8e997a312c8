"""Staged execution against the plain forward pass, for every registered model.

A split model runs as a chain of stages: ``model.run(x, 0, L)`` runs them in
turn within one call (a device's head, a non-preemptive BS tail), and a
preemptive BS scheduler calls ``model.run(x, k, k + 1)`` once per stage
("stagewise").  The baseline is the forward pass of the same modules
gathered in one ``nn.Sequential``.  All three run in this process at batch 1
on one thread, in samples whose order rotates, and each figure is the median
of the per-sample ratios way / plain (target: at most 1.03).

    .venv/bin/python bench/split.py [--quick | --full] [--repeats N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from common import load_average, median, percentile, print_table, write_results
from torch import nn

from splitlab.models import MODELS, StagedModel, build_model

TARGET_RATIO = 1.03
# A sample runs a pass often enough to last about this long, so that the
# timer's resolution and one-off stalls weigh little even for small models.
SAMPLE_S = 0.02


def stagewise_pass(model: StagedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """One ``run`` call per stage, as the BS runs a tail one slice at a time."""

    def run(x: torch.Tensor) -> torch.Tensor:
        for stage in range(model.num_stages):
            x = model.run(x, stage, stage + 1)
        return x

    return run


def whole_pass(model: StagedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.run(x, 0, L)``: the stages in turn, within one call."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return model.run(x, 0, model.num_stages)

    return run


def time_sample(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, passes: int
) -> float:
    """Seconds per pass over ``passes`` back-to-back passes."""
    started_s = time.perf_counter()
    for _ in range(passes):
        run(x)
    return (time.perf_counter() - started_s) / passes


def bench_model(name: str, repeats: int) -> dict[str, Any]:
    """Measure one model: medians of the three ways and of the paired ratios."""
    model = build_model(name).eval()
    x = torch.randn(1, *model.input_shape)
    ways: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "plain": nn.Sequential(*model.stages).eval(),
        "run": whole_pass(model),
        "stagewise": stagewise_pass(model),
    }
    order = list(ways)

    with torch.inference_mode():
        reference = ways["plain"](x)
        for way, run in ways.items():
            if not torch.equal(run(x), reference):
                raise SystemExit(f"{name}: the {way} output differs from plain")

        # Warm up, then size a sample from the plain pass's time.
        for _ in range(3):
            for run in ways.values():
                run(x)
        single_s = time_sample(ways["plain"], x, 3)
        passes = max(1, round(SAMPLE_S / single_s))

        times_s: dict[str, list[float]] = {way: [] for way in ways}
        for index in range(repeats):
            # Rotating the order cancels any advantage of a position.
            shift = index % len(order)
            for way in order[shift:] + order[:shift]:
                times_s[way].append(time_sample(ways[way], x, passes))

    row: dict[str, Any] = {
        "model": name,
        "stages": model.num_stages,
        "passes_per_sample": passes,
        "samples": repeats,
    }
    for way in ways:
        row[f"{way}_ms"] = median(times_s[way]) * 1e3
    for way in ("run", "stagewise"):
        ratios = [
            mine / plain
            for mine, plain in zip(times_s[way], times_s["plain"], strict=True)
        ]
        row[f"{way}_ratio"] = median(ratios)
        row[f"{way}_ratio_p25"] = percentile(ratios, 0.25)
        row[f"{way}_ratio_p75"] = percentile(ratios, 0.75)
        row[f"{way}_meets_target"] = row[f"{way}_ratio"] <= TARGET_RATIO
    return row


def main() -> None:
    """Run the bench over the registry, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="31 pairs per model")
    mode.add_argument("--full", action="store_true", help="201 pairs per model")
    parser.add_argument("--repeats", type=int, help="pairs per model")
    args = parser.parse_args()
    repeats = args.repeats or (201 if args.full else 31 if args.quick else 61)
    started_load = load_average()[0]
    torch.set_num_threads(1)

    rows = [bench_model(name, repeats) for name in MODELS]
    print(
        f"model.run(x, 0, L) and one run() per stage against nn.Sequential: "
        f"batch 1, 1 thread, {repeats} interleaved samples, target <= {TARGET_RATIO}"
    )
    print_table(
        ["model", "plain ms", "run ms", "ratio", "stagewise ms", "ratio", "ok"],
        [
            [
                row["model"],
                row["plain_ms"],
                row["run_ms"],
                row["run_ratio"],
                row["stagewise_ms"],
                row["stagewise_ratio"],
                "/".join(
                    "yes" if row[f"{way}_meets_target"] else "NO"
                    for way in ("run", "stagewise")
                ),
            ]
            for row in rows
        ],
    )
    write_results(
        "split",
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "target_ratio": TARGET_RATIO,
            "repeats": repeats,
            "rows": rows,
        },
        started_load=started_load,
    )


if __name__ == "__main__":
    main()
