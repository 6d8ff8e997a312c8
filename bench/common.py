"""Helpers shared by the side-by-side benchmarks: statistics, tables, JSON.

Every benchmark measures its subject and its baseline in the same run,
interleaved, and reports medians and ratios, because the machine is shared
and its load changes from one minute to the next.  This module holds what
they all need: robust statistics, the machine's description (CPU model,
cores, load average), a plain-text table and the JSON file each benchmark
writes to ``bench/results/NAME.json``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where every benchmark writes its JSON file."""


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (at least one)."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``, ``fraction`` in ``(0, 1]``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages of the machine."""
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """The CPU model (from ``lscpu``), the core count and the Python version."""
    model = platform.processor() or platform.machine()
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
            break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def format_value(value: object) -> str:
    """A table cell: floats with four significant digits, ``-`` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``headers`` as right-aligned columns."""
    cells = [[format_value(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[index]) for row in cells)])
        for index, header in enumerate(headers)
    ]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def write_results(name: str, data: dict[str, Any], *, started_load: float) -> Path:
    """Write ``bench/results/NAME.json``: the figures with date, machine and load.

    Parameters
    ----------
    name:
        The benchmark's name, also the file's stem.
    data:
        The benchmark's own figures.
    started_load:
        The one-minute load average when the benchmark started; the one at
        its end is read here.
    """
    record = {
        "bench": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_start": round(started_load, 2),
        "load_average_end": round(load_average()[0], 2),
        **data,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"wrote {path} (load average {record['load_average_start']} -> "
        f"{record['load_average_end']})"
    )
    return path
