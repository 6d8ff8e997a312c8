"""Sweeps and reruns: many runs of one scenario, recorded in one store.

A sweep file names a base scenario and a grid of scenario fields; every
combination of grid values is a *cell*, run once with
:func:`splitlab.experiment.run_scenario`.  Every cell's run is tagged in the
store's ``sweep_runs`` table with the sweep's name and the cell's values, so
an interrupted sweep started again skips the cells that already have a
completed run of the same scenario and runs only the rest.

Field paths are dotted (``workload.period_ms``); a list is indexed with
``[*]`` (every element), ``[2]`` (by position) or ``[d1]`` (the element whose
``name`` is ``d1``), so ``devices[*].link.latency_ms`` sets every device's
link latency.  A value may be a mapping, replacing the whole field
(``devices[*].link: [{latency_ms: 5, rate_mbps: 50}, ...]`` varies two link
fields together).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from splitlab.errors import ConfigError
from splitlab.scenario import Scenario, load_scenario, parse_scenario

logger = logging.getLogger(__name__)

SWEEP_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    cell INTEGER NOT NULL,
    params_json TEXT NOT NULL,
    scenario_hash TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (sweep, run_id)
);
"""

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[([A-Za-z0-9_*-]+)\])?$")

Runner = Callable[[Scenario, Path], int]
"""Runs one scenario with its results in the given workspace; returns the run id."""


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """A sweep as its file describes it.

    Attributes
    ----------
    name:
        The sweep's name; its cells are tagged with it in the store.
    base:
        The scenario every cell starts from, with ``fixed`` applied.
    fixed:
        Fields set the same way for every cell (the file's ``set``).
    grid:
        ``(field path, values)`` pairs; the cells are their product, the
        last field varying fastest.
    """

    name: str
    base: Scenario
    fixed: Mapping[str, Any]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True, slots=True)
class SweepCell:
    """One combination of grid values and the scenario it makes.

    Attributes
    ----------
    index:
        The cell's position in the grid's product, from 0.
    params:
        Field path to value, in the grid's order.
    scenario:
        The validated scenario of the cell.
    """

    index: int
    params: Mapping[str, Any]
    scenario: Scenario

    @property
    def label(self) -> str:
        """The cell's values as ``field=value`` pairs."""
        return _label(self.params)


@dataclass(frozen=True, slots=True)
class SweepEvent:
    """Progress of a sweep, for a progress bar.

    Attributes
    ----------
    kind:
        ``planned`` once before anything runs, then ``started`` and
        ``finished`` around every cell that runs.
    cell:
        The cell started or finished (``None`` for ``planned``).
    done, to_run:
        Cells already completed before this invocation, and cells this
        invocation runs.
    run_id, status:
        The finished cell's run and its status.
    """

    kind: Literal["planned", "started", "finished"]
    cell: SweepCell | None
    done: int
    to_run: int
    run_id: int | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a sweep invocation did.

    Attributes
    ----------
    name:
        The sweep's name.
    cells:
        Every cell of the grid.
    run_ids:
        Cell index to the run that holds its result (completed runs, and the
        runs of cells that ended incomplete in this invocation).
    skipped:
        Cells that already had a completed run.
    incomplete:
        Indexes of cells whose run ended incomplete.
    """

    name: str
    cells: tuple[SweepCell, ...]
    run_ids: Mapping[int, int]
    skipped: int
    incomplete: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SweepRun:
    """A run tagged as a sweep's cell.

    Attributes
    ----------
    run_id, cell:
        The run and the cell index it was run for.
    params:
        The cell's field values.
    status:
        The run's status (``completed``, ``incomplete`` or ``running``).
    """

    run_id: int
    cell: int
    params: Mapping[str, Any]
    status: str


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def _label(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in params.items())


# Field paths ---------------------------------------------------------------


def _set_path(
    node: Any, segments: Sequence[str], value: Any, *, path: str, source: str
) -> None:
    match = _SEGMENT.match(segments[0])
    if match is None:
        raise ConfigError(f"{source}: {path}: cannot read {segments[0]!r} as a field")
    key, selector = match.groups()
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: {path}: {key!r} is inside a value, not a mapping")
    rest = segments[1:]
    if selector is None:
        if not rest:
            node[key] = value
            return
        _set_path(node.setdefault(key, {}), rest, value, path=path, source=source)
        return

    items = node.get(key)
    if not isinstance(items, list):
        raise ConfigError(f"{source}: {path}: {key!r} is not a list")
    if selector == "*":
        chosen = list(range(len(items)))
    elif selector.isdigit():
        if int(selector) >= len(items):
            raise ConfigError(
                f"{source}: {path}: index {selector} but {key!r} has "
                f"{len(items)} elements"
            )
        chosen = [int(selector)]
    else:
        chosen = [
            i
            for i, item in enumerate(items)
            if isinstance(item, dict) and item.get("name") == selector
        ]
        if not chosen:
            names = ", ".join(
                str(item.get("name")) for item in items if isinstance(item, dict)
            )
            raise ConfigError(
                f"{source}: {path}: no element of {key!r} named {selector!r} "
                f"(names: {names})"
            )
    for index in chosen:
        if rest:
            _set_path(items[index], rest, value, path=path, source=source)
        else:
            items[index] = value


def apply_overrides(
    scenario: Scenario, overrides: Mapping[str, Any], *, source: str = "overrides"
) -> Scenario:
    """A validated copy of ``scenario`` with fields set by path.

    Parameters
    ----------
    scenario:
        The scenario to start from.
    overrides:
        Field path (``seed``, ``workload.period_ms``,
        ``devices[*].link.latency_ms``, ``devices[d2].cpu_share``) to value.
    source:
        Named in error messages.

    Raises
    ------
    ConfigError
        Naming the source, the path and the value when a path does not lead
        to a field or the result is not a valid scenario.
    """
    data = scenario.model_dump(mode="json", by_alias=True, exclude_none=True)
    for path, value in overrides.items():
        _set_path(data, path.split("."), value, path=path, source=source)
    return parse_scenario(data, source=source)


# Sweep files ---------------------------------------------------------------


def parse_sweep(data: object, *, source: str, base_dir: Path) -> SweepSpec:
    """Validate a sweep's parsed YAML and resolve its base scenario.

    Parameters
    ----------
    data:
        A mapping with ``name``, ``scenario`` (a path relative to
        ``base_dir``, a bundled scenario's name, or an inline scenario
        mapping), an optional ``set`` mapping and a ``grid`` mapping of
        field path to a non-empty list of values.
    source:
        The file, for error messages.
    base_dir:
        Where a relative scenario path is looked up.

    Raises
    ------
    ConfigError
        Naming the file and the key that is wrong.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep must be a mapping, got {data!r}")
    unknown = sorted(set(data) - {"name", "scenario", "set", "grid"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigError(
            f"{source}: name: give 1 to 64 letters, digits, '_', '.' or '-' "
            f"(got {name!r})"
        )

    scenario_field = data.get("scenario")
    if isinstance(scenario_field, dict):
        base = parse_scenario(scenario_field, source=f"{source}: scenario")
    elif isinstance(scenario_field, str):
        candidate = base_dir / scenario_field
        base = load_scenario(candidate if candidate.exists() else scenario_field)
    else:
        raise ConfigError(
            f"{source}: scenario: give a scenario file or mapping "
            f"(got {scenario_field!r})"
        )

    fixed = data.get("set", {})
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: set: give a mapping (got {fixed!r})")
    base = apply_overrides(base, fixed, source=f"{source}: set")

    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source}: grid: give a non-empty mapping (got {grid!r})")
    axes = []
    for path, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{source}: grid.{path}: give a non-empty list (got {values!r})"
            )
        axes.append((str(path), tuple(values)))
    return SweepSpec(name=name, base=base, fixed=dict(fixed), grid=tuple(axes))


def load_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep file; see :func:`parse_sweep` for its format."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read sweep {file}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    return parse_sweep(data, source=str(file), base_dir=file.parent)


def expand(spec: SweepSpec) -> tuple[SweepCell, ...]:
    """Every cell of the grid, validated before any of them runs."""
    paths = [path for path, _ in spec.grid]
    cells = []
    for index, values in enumerate(itertools.product(*(v for _, v in spec.grid))):
        params = dict(zip(paths, values, strict=True))
        scenario = apply_overrides(
            spec.base, params, source=f"sweep {spec.name}, cell {_label(params)}"
        )
        cells.append(SweepCell(index=index, params=params, scenario=scenario))
    return tuple(cells)


# The sweep log in the store -------------------------------------------------


class SweepLog:
    """The ``sweep_runs`` table of a results store: which run is which cell.

    Parameters
    ----------
    path:
        The results store file (its ``runs`` table must exist).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._db.executescript(SWEEP_SCHEMA)
        except sqlite3.Error as error:
            raise ConfigError(
                f"cannot open results store {self.path}: {error}"
            ) from None

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> SweepLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, sweep: str, cell: SweepCell, run_id: int) -> None:
        """Tag ``run_id`` as the run of ``cell`` in ``sweep``."""
        self._db.execute(
            "INSERT OR REPLACE INTO sweep_runs VALUES (?, ?, ?, ?, ?, ?)",
            (
                sweep,
                run_id,
                cell.index,
                json.dumps(dict(cell.params), sort_keys=True),
                cell.scenario.fingerprint(),
                time.time(),
            ),
        )

    def completed(self, sweep: str) -> dict[str, int]:
        """Scenario fingerprint to the newest completed run, for ``sweep``."""
        rows = self._db.execute(
            "SELECT s.scenario_hash, MAX(s.run_id) FROM sweep_runs s"
            " JOIN runs r ON r.run_id = s.run_id"
            " WHERE s.sweep = ? AND r.status = 'completed'"
            " AND r.scenario_hash = s.scenario_hash GROUP BY s.scenario_hash",
            (sweep,),
        )
        return {str(fingerprint): int(run_id) for fingerprint, run_id in rows}

    def runs(self, sweep: str) -> list[SweepRun]:
        """Every run tagged with ``sweep``, oldest first."""
        rows = self._db.execute(
            "SELECT s.run_id, s.cell, s.params_json, r.status FROM sweep_runs s"
            " JOIN runs r ON r.run_id = s.run_id WHERE s.sweep = ?"
            " ORDER BY s.run_id",
            (sweep,),
        )
        return [
            SweepRun(
                run_id=int(run_id), cell=int(cell), params=json.loads(p), status=st
            )
            for run_id, cell, p, st in rows
        ]

    def sweeps(self) -> list[str]:
        """The names of the sweeps in the store."""
        rows = self._db.execute("SELECT DISTINCT sweep FROM sweep_runs ORDER BY sweep")
        return [str(name) for (name,) in rows]


def latest_completed(runs: Sequence[SweepRun]) -> list[SweepRun]:
    """For each distinct set of cell values, its newest completed run.

    A sweep whose file changed keeps the cells of the old grid; the report
    shows every cell that has a completed run.
    """
    chosen: dict[str, SweepRun] = {}
    for run in runs:
        if run.status == "completed":
            chosen[json.dumps(dict(run.params), sort_keys=True)] = run
    return sorted(chosen.values(), key=lambda run: (run.cell, run.run_id))


# Running ---------------------------------------------------------------------


def run_cell(scenario: Scenario, workspace: Path) -> int:
    """The default :data:`Runner`: :func:`~splitlab.experiment.run_scenario`."""
    from splitlab.experiment import run_scenario

    return run_scenario(scenario, workspace=workspace).run_id


def run_sweep(
    spec: SweepSpec,
    *,
    workspace: Path,
    runner: Runner = run_cell,
    on_event: Callable[[SweepEvent], None] | None = None,
) -> SweepResult:
    """Run every cell of ``spec`` that has no completed run in the store yet.

    Parameters
    ----------
    spec:
        The sweep.
    workspace:
        The folder whose ``results.sqlite`` holds the runs and the tags.
    runner:
        Runs one cell's scenario and returns its run id (tests inject a
        fake one).
    on_event:
        Receives a :class:`SweepEvent` before anything runs and around
        every cell.

    Notes
    -----
    A cell whose run ends incomplete is tagged, reported in the result and
    run again by the next invocation.  An exception from the runner (such
    as ``KeyboardInterrupt``) stops the sweep; the cells finished before it
    stay done.
    """
    from splitlab.experiment import STORE_NAME
    from splitlab.results import ResultStore

    cells = expand(spec)
    store_path = workspace / STORE_NAME
    ResultStore(store_path).close()  # creates the runs table on a new store
    with SweepLog(store_path) as log:
        completed = log.completed(spec.name)
        run_ids = {
            cell.index: completed[cell.scenario.fingerprint()]
            for cell in cells
            if cell.scenario.fingerprint() in completed
        }
        pending = [cell for cell in cells if cell.index not in run_ids]
        skipped = len(run_ids)
        logger.info(
            "sweep %s: %d cells, %d already done", spec.name, len(cells), skipped
        )

        def tell(event: SweepEvent) -> None:
            if on_event is not None:
                on_event(event)

        tell(SweepEvent("planned", None, skipped, len(pending)))
        incomplete = []
        for cell in pending:
            tell(SweepEvent("started", cell, skipped, len(pending)))
            run_id = runner(cell.scenario, workspace)
            log.record(spec.name, cell, run_id)
            status = _status(store_path, run_id)
            run_ids[cell.index] = run_id
            if status != "completed":
                incomplete.append(cell.index)
            tell(SweepEvent("finished", cell, skipped, len(pending), run_id, status))
    return SweepResult(
        name=spec.name,
        cells=cells,
        run_ids=run_ids,
        skipped=skipped,
        incomplete=tuple(incomplete),
    )


def _status(store_path: Path, run_id: int) -> str:
    from splitlab.results import ResultStore

    with ResultStore(store_path) as store:
        return store.run(run_id).status


# Reruns ----------------------------------------------------------------------


def stored_scenario(scenario_yaml: str, *, run_id: int) -> Scenario:
    """The scenario a run stored, validated again (its seed included)."""
    return parse_scenario(yaml.safe_load(scenario_yaml), source=f"run {run_id}")


def environment_changes(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two run environments: ``(before, after)``."""
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def rerun(workspace: Path, run_id: int, *, runner: Runner = run_cell) -> int:
    """Run a recorded run's scenario again, with its seed, in the same store.

    The new run's event log gets a ``rerun`` line naming the original run.

    Returns
    -------
    int
        The new run's id.
    """
    from splitlab.experiment import STORE_NAME
    from splitlab.results import ResultStore

    store_path = workspace / STORE_NAME
    if not store_path.is_file():
        raise ConfigError(f"no results store at {store_path}")
    with ResultStore(store_path) as store:
        record = store.run(run_id)
    scenario = stored_scenario(record.scenario_yaml, run_id=run_id)
    new_id = runner(scenario, workspace)
    with ResultStore(store_path) as store:
        store.record_event(new_id, "splitlab", "rerun", json.dumps({"of": run_id}))
    return new_id
