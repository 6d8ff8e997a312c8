"""The results store: every run, node, profile, plan and task in SQLite.

One database file per workspace.  Each finished task is committed the moment
it completes, so a crash of any process loses no finished task; a run row
says whether the run completed and, if not, why.  Several processes may
write the same file (WAL mode with a busy timeout).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from splitlab.errors import ConfigError
from splitlab.profile import (
    NodeProfile,
    StageProfile,
    profile_from_dict,
    profile_to_dict,
)

RunStatus = Literal["running", "completed", "incomplete"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    scenario_yaml TEXT NOT NULL,
    scenario_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    scheduler TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    reason TEXT,
    environment_json TEXT NOT NULL,
    test_accuracy REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    node TEXT NOT NULL,
    role TEXT NOT NULL,
    pid INTEGER,
    cpu_share REAL,
    memory_bytes INTEGER,
    limit_mechanism TEXT,
    limit_commands_json TEXT NOT NULL DEFAULT '[]',
    link_json TEXT,
    PRIMARY KEY (run_id, node)
);
CREATE TABLE IF NOT EXISTS stage_profiles (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    node TEXT NOT NULL,
    stage INTEGER NOT NULL,
    name TEXT NOT NULL,
    median_s REAL NOT NULL,
    p95_s REAL NOT NULL,
    output_bytes INTEGER NOT NULL,
    param_bytes INTEGER NOT NULL,
    input_bytes INTEGER NOT NULL,
    warmup INTEGER NOT NULL,
    repeats INTEGER NOT NULL,
    model TEXT NOT NULL,
    PRIMARY KEY (run_id, node, stage)
);
CREATE TABLE IF NOT EXISTS cuts (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    device TEXT NOT NULL,
    cut INTEGER NOT NULL,
    PRIMARY KEY (run_id, device)
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    task_id INTEGER NOT NULL,
    device TEXT NOT NULL,
    idx INTEGER NOT NULL,
    cut INTEGER NOT NULL,
    arrival_s REAL NOT NULL,
    device_wait_s REAL NOT NULL,
    device_s REAL NOT NULL,
    transmission_s REAL NOT NULL,
    bs_wait_s REAL NOT NULL,
    bs_s REAL NOT NULL,
    delay_s REAL NOT NULL,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    task_id INTEGER NOT NULL,
    device TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    label INTEGER NOT NULL,
    cut INTEGER NOT NULL,
    arrival_s REAL NOT NULL,
    device_wait_s REAL NOT NULL,
    device_s REAL NOT NULL,
    transmission_s REAL NOT NULL,
    bs_wait_s REAL NOT NULL,
    bs_s REAL NOT NULL,
    delay_s REAL NOT NULL,
    cut_bytes INTEGER NOT NULL,
    prediction INTEGER NOT NULL,
    logits BLOB NOT NULL,
    matches_unsplit INTEGER,
    max_abs_diff REAL,
    completed_at REAL NOT NULL,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS slices (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    task_id INTEGER NOT NULL,
    device TEXT NOT NULL,
    worker INTEGER NOT NULL,
    first_stage INTEGER NOT NULL,
    stages INTEGER NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    node TEXT NOT NULL,
    at REAL NOT NULL,
    cpu_fraction REAL,
    rss_bytes INTEGER NOT NULL,
    rtt_s REAL

);
CREATE TABLE IF NOT EXISTS profile_details (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    node TEXT NOT NULL,
    profile_json TEXT NOT NULL,
    PRIMARY KEY (run_id, node)
);
CREATE TABLE IF NOT EXISTS codec_checks (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    codec TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    agreed INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    correct_fp32 INTEGER NOT NULL,
    max_abs_change REAL NOT NULL,
    max_relative_change REAL NOT NULL,
    PRIMARY KEY (run_id, codec)
);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    at REAL NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One finished task as measured.

    Times are in seconds; ``arrival_s`` counts from the run's start and the
    parts add up to ``delay_s``.
    """

    task_id: int
    device: str
    idx: int
    sample: int
    label: int
    cut: int
    arrival_s: float
    device_wait_s: float
    device_s: float
    transmission_s: float
    bs_wait_s: float
    bs_s: float
    delay_s: float
    cut_bytes: int
    prediction: int
    logits: bytes
    completed_at: float
    matches_unsplit: bool | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True, slots=True)
class CodecCheck:
    """How the tasks whose cut tensor crossed in one lossy codec compare.

    Each such task's output is compared with the unsplit float32 model's on
    the same input.

    Attributes
    ----------
    codec:
        The codec's name (``int8+zstd``).
    tasks:
        Tasks compared.
    agreed:
        Tasks whose top-1 class equals the float32 model's.
    correct, correct_fp32:
        Tasks whose class equals the label, with the codec and in float32.
    max_abs_change:
        The largest absolute change of an output value.
    max_relative_change:
        The largest absolute change over the largest float32 output
        magnitude of the same task.
    """

    codec: str
    tasks: int
    agreed: int
    correct: int
    correct_fp32: int
    max_abs_change: float
    max_relative_change: float

    @property
    def agreement(self) -> float:
        """Share of tasks whose top-1 class equals the float32 model's."""
        return self.agreed / self.tasks if self.tasks else float("nan")

    @property
    def accuracy_change(self) -> float:
        """Accuracy with the codec minus accuracy in float32, same inputs."""
        if not self.tasks:
            return float("nan")
        return (self.correct - self.correct_fp32) / self.tasks

    def merged(self, other: CodecCheck) -> CodecCheck:
        """This check and ``other`` (of the same codec) as one."""
        return CodecCheck(
            codec=self.codec,
            tasks=self.tasks + other.tasks,
            agreed=self.agreed + other.agreed,
            correct=self.correct + other.correct,
            correct_fp32=self.correct_fp32 + other.correct_fp32,
            max_abs_change=max(self.max_abs_change, other.max_abs_change),
            max_relative_change=max(
                self.max_relative_change, other.max_relative_change
            ),
        )


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One task's delay as the planner predicted it, in seconds."""

    task_id: int
    device: str
    idx: int
    cut: int
    arrival_s: float
    device_wait_s: float
    device_s: float
    transmission_s: float
    bs_wait_s: float
    bs_s: float
    delay_s: float


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """A piece of a task's tail that one BS worker ran without a break.

    ``first_stage`` is the 0-based index of the first stage run (the cut plus
    the stages already done); times count from the run's start, in seconds.
    Together the slices are the BS schedule.
    """

    task_id: int
    device: str
    worker: int
    first_stage: int
    stages: int
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class UsageSample:
    """One node's resource use at one moment of a run (see splitlab.monitor).

    Attributes
    ----------
    node:
        The node's name.
    at:
        Unix time of the sample.
    cpu_fraction:
        CPU time of the node's processes over the interval before the sample,
        as a fraction of one core; ``None`` for a node's first sample.
    rss_bytes:
        Resident memory of the node's processes.
    rtt_s:
        Round-trip time to the base station, or ``None`` when not measured
        or not answered.
    """

    node: str
    at: float
    cpu_fraction: float | None
    rss_bytes: int
    rtt_s: float | None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as it was realised for a run."""

    node: str
    role: Literal["device", "bs"]
    pid: int | None
    cpu_share: float | None
    memory_bytes: int | None
    limit_mechanism: str | None
    limit_commands: tuple[str, ...] = ()
    link: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's row."""

    run_id: int
    name: str
    scenario_yaml: str
    scenario_hash: str
    seed: int
    algorithm: str
    scheduler: str
    started_at: float
    finished_at: float | None
    status: RunStatus
    reason: str | None
    environment: Mapping[str, Any]
    test_accuracy: float | None


_TASK_COLUMNS = tuple(field.name for field in fields(TaskRecord))
_PREDICTION_COLUMNS = tuple(field.name for field in fields(PredictionRecord))
_SLICE_COLUMNS = tuple(field.name for field in fields(SliceRecord))
_SAMPLE_COLUMNS = tuple(field.name for field in fields(UsageSample))


class ResultStore:
    """A SQLite results file.

    Parameters
    ----------
    path:
        The database file; created with its tables if absent.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(
                f"cannot open results store {self.path}: {error}"
            ) from None

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Writing ---------------------------------------------------------------

    def create_run(
        self,
        *,
        name: str,
        scenario_yaml: str,
        scenario_hash: str,
        seed: int,
        algorithm: str,
        scheduler: str,
        environment: Mapping[str, Any],
        test_accuracy: float | None = None,
    ) -> int:
        """Insert a run in state ``running`` and return its id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (name, scenario_yaml, scenario_hash, seed, algorithm,"
                " scheduler, started_at, status, environment_json, test_accuracy)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (
                    name,
                    scenario_yaml,
                    scenario_hash,
                    seed,
                    algorithm,
                    scheduler,
                    time.time(),
                    json.dumps(environment, sort_keys=True),
                    test_accuracy,
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def finish_run(self, run_id: int, status: RunStatus, reason: str | None) -> None:
        """Mark a run finished; a run already marked incomplete stays so."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, reason = ?"
                " WHERE run_id = ? AND status != 'incomplete'",
                (time.time(), status, reason, run_id),
            )

    def reopen_run(self, run_id: int) -> None:
        """Mark an incomplete run running again, to resume it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = 'running', reason = NULL, finished_at = NULL"
                " WHERE run_id = ?",
                (run_id,),
            )
        self.record_event(run_id, "bs", "resumed", "{}")

    def record_node(self, run_id: int, node: NodeRecord) -> None:
        """Insert or replace a node's row."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    node.node,
                    node.role,
                    node.pid,
                    node.cpu_share,
                    node.memory_bytes,
                    node.limit_mechanism,
                    json.dumps(list(node.limit_commands)),
                    None if node.link is None else json.dumps(dict(node.link)),
                ),
            )

    def record_profile(self, run_id: int, profile: NodeProfile) -> None:
        """Store every stage of one node's profile."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO stage_profiles"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        profile.node,
                        index,
                        stage.name,
                        stage.median_s,
                        stage.p95_s,
                        stage.output_bytes,
                        stage.param_bytes,
                        profile.input_bytes,
                        profile.warmup,
                        profile.repeats,
                        profile.model,
                    )
                    for index, stage in enumerate(profile.stages)
                ],
            )
            # The whole profile (FLOPs, peak memory, bytes per codec) as JSON.
            db.execute(
                "INSERT OR REPLACE INTO profile_details VALUES (?, ?, ?)",
                (run_id, profile.node, json.dumps(profile_to_dict(profile))),
            )

    def record_plan(
        self,
        run_id: int,
        cuts: Mapping[str, int],
        predictions: Sequence[PredictionRecord],
    ) -> None:
        """Store the scheme and every task's predicted delay."""
        placeholders = ", ".join("?" * (len(_PREDICTION_COLUMNS) + 1))
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO cuts VALUES (?, ?, ?)",
                [(run_id, device, cut) for device, cut in cuts.items()],
            )
            db.executemany(
                f"INSERT OR REPLACE INTO predictions (run_id, "
                f"{', '.join(_PREDICTION_COLUMNS)}) VALUES ({placeholders})",
                [(run_id, *asdict(p).values()) for p in predictions],
            )

    def record_task(
        self, run_id: int, task: TaskRecord, slices: Sequence[SliceRecord] = ()
    ) -> None:
        """Commit one finished task and the BS slices that ran it, together."""
        placeholders = ", ".join("?" * (len(_TASK_COLUMNS) + 1))
        slice_placeholders = ", ".join("?" * (len(_SLICE_COLUMNS) + 1))
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO tasks (run_id, {', '.join(_TASK_COLUMNS)})"
                f" VALUES ({placeholders})",
                (run_id, *asdict(task).values()),
            )
            db.executemany(
                f"INSERT INTO slices (run_id, {', '.join(_SLICE_COLUMNS)})"
                f" VALUES ({slice_placeholders})",
                [(run_id, *asdict(piece).values()) for piece in slices],
            )

    def record_verification(
        self, run_id: int, results: Sequence[tuple[int, bool | None, float]]
    ) -> None:
        """Store ``(task_id, matches_unsplit, max_abs_diff)`` for tasks.

        ``matches_unsplit`` is ``None`` for a task whose cut tensor crossed
        in a lossy codec: it is compared, not held to equality (see
        :meth:`record_codec_check`).
        """
        with self._transaction() as db:
            db.executemany(
                "UPDATE tasks SET matches_unsplit = ?, max_abs_diff = ?"
                " WHERE run_id = ? AND task_id = ?",
                [
                    (None if ok is None else int(ok), diff, run_id, task_id)
                    for task_id, ok, diff in results
                ],
            )

    def record_samples(self, run_id: int, samples: Sequence[UsageSample]) -> None:
        """Commit one round of monitoring samples."""
        placeholders = ", ".join("?" * (len(_SAMPLE_COLUMNS) + 1))
        with self._transaction() as db:
            db.executemany(
                f"INSERT INTO samples (run_id, {', '.join(_SAMPLE_COLUMNS)})"
                f" VALUES ({placeholders})",
                [(run_id, *asdict(sample).values()) for sample in samples],
            )

    def record_codec_check(self, run_id: int, check: CodecCheck) -> None:
        """Add a lossy codec's comparison to the run's (merging with earlier)."""
        earlier = {c.codec: c for c in self.codec_checks(run_id)}.get(check.codec)
        if earlier is not None:
            check = earlier.merged(check)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO codec_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, *asdict(check).values()),
            )

    def codec_checks(self, run_id: int) -> list[CodecCheck]:
        """Every lossy codec's comparison for a run, by codec name."""
        rows = self._db.execute(
            "SELECT codec, tasks, agreed, correct, correct_fp32, max_abs_change,"
            " max_relative_change FROM codec_checks WHERE run_id = ? ORDER BY codec",
            (run_id,),
        )
        return [CodecCheck(*row) for row in rows]

    def record_event(self, run_id: int, node: str, kind: str, detail: str) -> None:
        """Append a line to the run's event log."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (run_id, time.time(), node, kind, detail),
            )

    # Reading ---------------------------------------------------------------

    def run(self, run_id: int) -> RunRecord:
        """One run's row; :class:`ConfigError` if there is none."""
        row = self._db.execute(
            "SELECT run_id, name, scenario_yaml, scenario_hash, seed, algorithm,"
            " scheduler, started_at, finished_at, status, reason, environment_json,"
            " test_accuracy FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise ConfigError(f"no run {run_id} in {self.path}")
        return RunRecord(
            run_id=row[0],
            name=row[1],
            scenario_yaml=row[2],
            scenario_hash=row[3],
            seed=row[4],
            algorithm=row[5],
            scheduler=row[6],
            started_at=row[7],
            finished_at=row[8],
            status=row[9],
            reason=row[10],
            environment=json.loads(row[11]),
            test_accuracy=row[12],
        )

    def latest_run_id(self) -> int | None:
        """The newest run's id, or ``None`` for an empty store."""
        row = self._db.execute("SELECT MAX(run_id) FROM runs").fetchone()
        return None if row[0] is None else int(row[0])

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        ids = [row[0] for row in self._db.execute("SELECT run_id FROM runs")]
        return [self.run(run_id) for run_id in ids]

    def tasks(self, run_id: int) -> list[TaskRecord]:
        """A run's finished tasks ordered by task id."""
        rows = self._db.execute(
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE run_id = ?"
            " ORDER BY task_id",
            (run_id,),
        )
        records = []
        for row in rows:
            values = dict(zip(_TASK_COLUMNS, row, strict=True))
            if values["matches_unsplit"] is not None:
                values["matches_unsplit"] = bool(values["matches_unsplit"])
            records.append(TaskRecord(**values))
        return records

    def task_counts(
        self, run_id: int, *, table: Literal["tasks", "predictions"] = "tasks"
    ) -> dict[str, int]:
        """Finished (or, with ``table="predictions"``, planned) tasks per device."""
        rows = self._db.execute(
            f"SELECT device, COUNT(*) FROM {table} WHERE run_id = ? GROUP BY device",
            (run_id,),
        )
        return {str(device): int(count) for device, count in rows}

    def predictions(self, run_id: int) -> list[PredictionRecord]:
        """A run's predicted task delays ordered by task id."""
        rows = self._db.execute(
            f"SELECT {', '.join(_PREDICTION_COLUMNS)} FROM predictions"
            " WHERE run_id = ? ORDER BY task_id",
            (run_id,),
        )
        return [PredictionRecord(*row) for row in rows]

    def slices(self, run_id: int) -> list[SliceRecord]:
        """A run's BS schedule ordered by start time."""
        rows = self._db.execute(
            f"SELECT {', '.join(_SLICE_COLUMNS)} FROM slices WHERE run_id = ?"
            " ORDER BY start_s, worker",
            (run_id,),
        )
        return [SliceRecord(*row) for row in rows]

    def cuts(self, run_id: int) -> dict[str, int]:
        """The scheme a run used."""
        rows = self._db.execute(
            "SELECT device, cut FROM cuts WHERE run_id = ? ORDER BY device", (run_id,)
        )
        return {str(device): int(cut) for device, cut in rows}

    def nodes(self, run_id: int) -> list[NodeRecord]:
        """The nodes of a run."""
        rows = self._db.execute(
            "SELECT node, role, pid, cpu_share, memory_bytes, limit_mechanism,"
            " limit_commands_json, link_json FROM nodes WHERE run_id = ?"
            " ORDER BY role DESC, node",
            (run_id,),
        )
        return [
            NodeRecord(
                node,
                role,
                pid,
                share,
                memory,
                mechanism,
                tuple(json.loads(commands)),
                None if link is None else json.loads(link),
            )
            for node, role, pid, share, memory, mechanism, commands, link in rows
        ]

    def profiles(self, run_id: int) -> dict[str, NodeProfile]:
        """Every node's stage profile for a run."""
        rows = self._db.execute(
            "SELECT node, name, median_s, p95_s, output_bytes, param_bytes,"
            " input_bytes, warmup, repeats, model FROM stage_profiles"
            " WHERE run_id = ? ORDER BY node, stage",
            (run_id,),
        ).fetchall()
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(row)
        profiles = {}
        for node, stage_rows in grouped.items():
            first = stage_rows[0]
            profiles[node] = NodeProfile(
                node=node,
                model=first[9],
                input_bytes=first[6],
                stages=tuple(StageProfile(*row[1:6]) for row in stage_rows),
                warmup=first[7],
                repeats=first[8],
            )
        details = self._db.execute(
            "SELECT node, profile_json FROM profile_details WHERE run_id = ?",
            (run_id,),
        )
        for node, text in details:
            profiles[node] = profile_from_dict(json.loads(text))
        return profiles

    def samples(self, run_id: int) -> list[UsageSample]:
        """A run's monitoring samples, oldest first."""
        rows = self._db.execute(
            f"SELECT {', '.join(_SAMPLE_COLUMNS)} FROM samples WHERE run_id = ?"
            " ORDER BY at, node",
            (run_id,),
        )
        return [UsageSample(*row) for row in rows]

    def events(self, run_id: int) -> list[tuple[float, str, str, str]]:
        """A run's event log: ``(at, node, kind, detail)``."""
        rows = self._db.execute(
            "SELECT at, node, kind, detail FROM events WHERE run_id = ? ORDER BY at",
            (run_id,),
        )
        return [
            (float(at), str(node), str(kind), str(detail))
            for at, node, kind, detail in rows
        ]
