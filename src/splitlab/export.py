"""Runs as tables: pandas DataFrames of the results store, and CSV/Parquet files.

Each ``*_frame`` function returns one table of one run with a ``run_id``
column first, in the store's own units (seconds, bytes), one row per record
and the columns in a fixed order with fixed dtypes, so a frame written to CSV
or Parquet and read back with :func:`read_export` equals the one written.
A task's raw logits (float32 bytes) are left out of the tasks table; its
``prediction`` column holds their argmax.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from splitlab.energy import run_energy
from splitlab.errors import ConfigError
from splitlab.results import ResultStore

logger = logging.getLogger(__name__)

ExportFormat = Literal["csv", "parquet"]

# Column name -> dtype, in the order the columns are written.
SCHEMAS: dict[str, dict[str, str]] = {
    "runs": {
        "run_id": "int64",
        "name": "string",
        "scenario_yaml": "string",
        "scenario_hash": "string",
        "seed": "int64",
        "algorithm": "string",
        "scheduler": "string",
        "started_at": "float64",
        "finished_at": "float64",
        "status": "string",
        "reason": "string",
        "environment_json": "string",
        "test_accuracy": "float64",
    },
    "nodes": {
        "run_id": "int64",
        "node": "string",
        "role": "string",
        "pid": "Int64",
        "cpu_share": "float64",
        "memory_bytes": "Int64",
        "limit_mechanism": "string",
        "latency_ms": "float64",
        "rate_mbps": "float64",
        "jitter_ms": "float64",
    },
    "stage_profiles": {
        "run_id": "int64",
        "node": "string",
        "stage": "int64",
        "name": "string",
        "median_s": "float64",
        "p95_s": "float64",
        "output_bytes": "int64",
        "param_bytes": "int64",
        "input_bytes": "int64",
        "warmup": "int64",
        "repeats": "int64",
        "model": "string",
    },
    "cuts": {"run_id": "int64", "device": "string", "cut": "int64"},
    "predictions": {
        "run_id": "int64",
        "task_id": "int64",
        "device": "string",
        "idx": "int64",
        "cut": "int64",
        "arrival_s": "float64",
        "device_wait_s": "float64",
        "device_s": "float64",
        "transmission_s": "float64",
        "bs_wait_s": "float64",
        "bs_s": "float64",
        "delay_s": "float64",
    },
    "tasks": {
        "run_id": "int64",
        "task_id": "int64",
        "device": "string",
        "idx": "int64",
        "sample": "int64",
        "label": "int64",
        "cut": "int64",
        "arrival_s": "float64",
        "device_wait_s": "float64",
        "device_s": "float64",
        "transmission_s": "float64",
        "bs_wait_s": "float64",
        "bs_s": "float64",
        "delay_s": "float64",
        "cut_bytes": "int64",
        "prediction": "int64",
        "completed_at": "float64",
        "matches_unsplit": "boolean",
        "max_abs_diff": "float64",
    },
    "slices": {
        "run_id": "int64",
        "task_id": "int64",
        "device": "string",
        "worker": "int64",
        "first_stage": "int64",
        "stages": "int64",
        "start_s": "float64",
        "end_s": "float64",
    },
    "samples": {
        "run_id": "int64",
        "node": "string",
        "at": "float64",
        "cpu_fraction": "float64",
        "rss_bytes": "int64",
        "rtt_s": "float64",
    },
    "energy": {
        "run_id": "int64",
        "task_id": "int64",
        "device": "string",
        "compute_j": "float64",
        "link_j": "float64",
        "total_j": "float64",
    },
}


def _frame(table: str, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    schema = SCHEMAS[table]
    frame = pd.DataFrame(list(rows), columns=list(schema))
    return frame.astype(schema)


def runs_frame(
    store: ResultStore, run_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """The runs' rows (every run when ``run_ids`` is ``None``).

    The environment (versions, git revision) is one JSON text column,
    ``environment_json``.
    """
    records = (
        store.runs() if run_ids is None else [store.run(run_id) for run_id in run_ids]
    )
    return _frame(
        "runs",
        [
            {
                "run_id": r.run_id,
                "name": r.name,
                "scenario_yaml": r.scenario_yaml,
                "scenario_hash": r.scenario_hash,
                "seed": r.seed,
                "algorithm": r.algorithm,
                "scheduler": r.scheduler,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "status": r.status,
                "reason": r.reason,
                "environment_json": json.dumps(r.environment, sort_keys=True),
                "test_accuracy": r.test_accuracy,
            }
            for r in records
        ],
    )


def nodes_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """A run's nodes, with each device's link as three columns (BS: empty)."""
    rows = []
    for node in store.nodes(run_id):
        link = node.link or {}
        rows.append(
            {
                "run_id": run_id,
                "node": node.node,
                "role": node.role,
                "pid": node.pid,
                "cpu_share": node.cpu_share,
                "memory_bytes": node.memory_bytes,
                "limit_mechanism": node.limit_mechanism,
                "latency_ms": link.get("latency_ms"),
                "rate_mbps": link.get("rate_mbps"),
                "jitter_ms": link.get("jitter_ms"),
            }
        )
    return _frame("nodes", rows)


def profiles_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """Every node's per-stage profile; ``stage`` counts from 0."""
    rows = []
    for node, profile in store.profiles(run_id).items():
        for index, stage in enumerate(profile.stages):
            rows.append(
                {
                    "run_id": run_id,
                    "node": node,
                    "stage": index,
                    "name": stage.name,
                    "median_s": stage.median_s,
                    "p95_s": stage.p95_s,
                    "output_bytes": stage.output_bytes,
                    "param_bytes": stage.param_bytes,
                    "input_bytes": profile.input_bytes,
                    "warmup": profile.warmup,
                    "repeats": profile.repeats,
                    "model": profile.model,
                }
            )
    return _frame("stage_profiles", rows)


def cuts_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """The cut each device used."""
    return _frame(
        "cuts",
        [
            {"run_id": run_id, "device": device, "cut": cut}
            for device, cut in store.cuts(run_id).items()
        ],
    )


def predictions_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """Every task's delay as the planner predicted it, in seconds."""
    return _records_frame("predictions", run_id, store.predictions(run_id))


def tasks_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """Every finished task as measured, in seconds and bytes (no logits)."""
    return _records_frame("tasks", run_id, store.tasks(run_id))


def slices_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """The BS schedule: every slice of a tail a worker ran, in seconds."""
    return _records_frame("slices", run_id, store.slices(run_id))


def _records_frame(table: str, run_id: int, records: Sequence[object]) -> pd.DataFrame:
    """A table's frame from store records whose fields name its columns."""
    columns = list(SCHEMAS[table])[1:]
    return _frame(
        table,
        [
            {"run_id": run_id, **{c: getattr(record, c) for c in columns}}
            for record in records
        ],
    )


def samples_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """Every node's monitoring samples: CPU in cores, memory in bytes, RTT in s."""
    return _records_frame("samples", run_id, store.samples(run_id))


def energy_frame(store: ResultStore, run_id: int) -> pd.DataFrame:
    """Every task's modelled energy on its device, in joules."""
    return _records_frame("energy", run_id, run_energy(store, run_id))


_PER_RUN: dict[str, Callable[[ResultStore, int], pd.DataFrame]] = {
    "nodes": nodes_frame,
    "stage_profiles": profiles_frame,
    "cuts": cuts_frame,
    "predictions": predictions_frame,
    "tasks": tasks_frame,
    "slices": slices_frame,
    "samples": samples_frame,
    "energy": energy_frame,
}


def run_frames(store: ResultStore, run_ids: Sequence[int]) -> dict[str, pd.DataFrame]:
    """Every table for the given runs, each run's rows one after the other."""
    frames = {"runs": runs_frame(store, run_ids)}
    for table, build in _PER_RUN.items():
        parts = [build(store, run_id) for run_id in run_ids]
        frames[table] = (
            pd.concat(parts, ignore_index=True) if parts else _frame(table, [])
        )
    return frames


def export_runs(
    store: ResultStore,
    run_ids: Sequence[int],
    out_dir: str | Path,
    *,
    fmt: ExportFormat,
) -> list[Path]:
    """Write one file per table (``runs.csv``, ``tasks.csv``, ...) to ``out_dir``.

    Returns
    -------
    list[Path]
        The files written, in the order of :data:`SCHEMAS`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table, frame in run_frames(store, run_ids).items():
        path = out / f"{table}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        logger.debug("wrote %d rows to %s", len(frame), path)
        written.append(path)
    return written


def read_export(out_dir: str | Path, *, fmt: ExportFormat) -> dict[str, pd.DataFrame]:
    """Read back the tables :func:`export_runs` wrote, with their dtypes.

    Raises
    ------
    ConfigError
        If a table's file is missing.
    """
    out = Path(out_dir)
    frames = {}
    for table, schema in SCHEMAS.items():
        path = out / f"{table}.{fmt}"
        if not path.is_file():
            raise ConfigError(f"export folder {out} has no {path.name}")
        if fmt == "csv":
            frame = pd.read_csv(path, dtype=schema)
        else:
            frame = pd.read_parquet(path)
        frames[table] = frame[list(schema)].astype(schema)
    return frames
