"""The partitioning manager: splitlab's HTTP API and the web GUI it serves.

:func:`create_app` builds a FastAPI application over one workspace folder:

- ``WORKSPACE/scenarios/NAME.yaml``: scenarios, exactly the YAML files the
  CLI reads (``splitlab run WORKSPACE/scenarios/NAME.yaml``);
- ``WORKSPACE/algorithms/``: uploaded algorithm files and ``index.json``,
  which records who uploaded each and when (they run as code on the BS);
- ``WORKSPACE/results.sqlite``: the results store the runs write;
- ``WORKSPACE/logs/``: the output of every run started here.

A run is never executed inside the server: it is ``python -m splitlab.cli
run FILE --workspace W`` in its own process group, stopped with SIGTERM so
the CLI tears its testbed down itself.  Progress is read from the results
store, which commits every task as it completes.

Access: with ``token=None`` the server answers loopback clients only, checks
the ``Host`` header against DNS rebinding and wants the ``X-Splitlab``
header on every request that changes something (a page of another site
cannot send it without the browser asking first).  With a token, every API
call needs ``Authorization: Bearer TOKEN``.  The OpenAPI description
(``/api/openapi.json``, ``/api/docs``) is public: it holds no data.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.base import RequestResponseEndpoint

from splitlab import calibration
from splitlab.errors import ConfigError, SplitlabError
from splitlab.experiment import STORE_NAME
from splitlab.models import MODELS
from splitlab.placement import link_fields, wifi_link, wifi_range_m
from splitlab.plan import ALGORITHMS
from splitlab.report import OVERALL, compare_runs, summarise
from splitlab.results import ResultStore
from splitlab.scenario import (
    DataConfig,
    Scenario,
    load_scenario,
    parse_scenario,
)
from splitlab.schedule import SCHEDULERS
from splitlab.search import OBJECTIVES

logger = logging.getLogger(__name__)

UI_DIR = Path(__file__).parent / "ui"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
"""A scenario's name, which is also its file name: no slash, no leading dot."""
ALGORITHM_FILE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\.py$")
MAX_UPLOAD_BYTES = 1 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
CLIENT_HEADER = "X-Splitlab"
"""Sent by the GUI with every request that changes something."""
RUN_FIGURES = ("breakdown", "schedule", "cdf", "prediction", "cuts", "profile")
COMPARE_FIGURES = ("comparison", "cut-rate")
STOP_GRACE_S = 30.0
_PUBLIC_PATHS = frozenset(
    {"/api/openapi.json", "/api/docs", "/api/docs/oauth2-redirect"}
)


def access_token(host: str, given: str | None) -> str | None:
    """The token a server bound to ``host`` wants, or ``None`` on loopback.

    A loopback address needs none (only this machine reaches it); any other
    address needs ``given``, or a new random token when none is given.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return given or secrets.token_urlsafe(24)


# Errors ------------------------------------------------------------------


class ApiError(HTTPException):
    """A client error naming the field and the value that were wrong."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, value: Any = None
    ) -> None:
        super().__init__(
            status, {"field": field, "value": _json_safe(value), "message": message}
        )


def _config_error(error: ConfigError, *, status: int = 422) -> ApiError:
    """A scenario's ConfigError as a 4xx that names its field.

    The messages read ``SOURCE: FIELD: what (got VALUE)``; the field is the
    second part.
    """
    text = str(error)
    parts = text.split(": ", 2)
    field_name = parts[1] if len(parts) == 3 else None
    got = re.search(r"\(got (.*?)\)(?: \(and \d+ more problems?\))?$", text)
    return ApiError(status, text, field=field_name, value=got.group(1) if got else None)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, so JSON stays standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return None
    return value


def _safe_dict(value: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = _json_safe(value)
    return cleaned


def _safe_list(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cleaned: list[dict[str, Any]] = _json_safe(value)
    return cleaned


class _YamlDumper(yaml.SafeDumper):
    """Block style, but a list of plain values on one line (``[x, y]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(not isinstance(item, dict | list) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_YamlDumper.add_representer(list, _represent_list)


def scenario_yaml(data: dict[str, Any]) -> str:
    """The text of a scenario file holding ``data``."""
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True)


# Request bodies -------------------------------------------------------------


class ScenarioBody(BaseModel):
    """A scenario as the YAML file holds it (a mapping)."""

    data: dict[str, Any]


class DuplicateBody(BaseModel):
    """The name of the copy."""

    name: str


class PlacementBody(BaseModel):
    """A device's and the base station's positions, ``[x, y]`` in metres."""

    device: tuple[float, float]
    base_station: tuple[float, float] = (0.0, 0.0)


class RunBody(BaseModel):
    """Which saved scenario to run."""

    scenario: str


# Runs started here ----------------------------------------------------------


@dataclass
class Job:
    """A ``splitlab run`` subprocess started by the server.

    ``run_id`` is the store's run once the CLI has created it: the first
    run after ``after_run_id`` whose scenario hash is ``scenario_hash``.
    """

    job_id: int
    scenario: str
    path: Path
    log: Path
    process: subprocess.Popen[bytes]
    started_at: float
    after_run_id: int
    scenario_hash: str
    run_id: int | None = None
    returncode: int | None = None
    stopping: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def active(self) -> bool:
        """Whether the subprocess still runs."""
        return self.returncode is None


class RunManager:
    """Starts, follows and stops ``splitlab run`` subprocesses.

    One run at a time: a second would share the machine's cores with the
    first and distort both runs' measurements.
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def start(self, scenario: str, path: Path) -> Job:
        """Start ``splitlab run PATH`` for the saved scenario ``scenario``."""
        loaded = load_scenario(path)
        with self._lock:
            running = [job for job in self._jobs.values() if job.active]
            if running:
                raise ApiError(
                    409,
                    f"run {running[0].job_id} ({running[0].scenario}) is still "
                    "running; stop it or wait for it",
                    field="scenario",
                    value=scenario,
                )
            job_id = max(self._jobs, default=0) + 1
            logs = self.workspace / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            log = logs / f"job-{int(time.time())}-{job_id}.log"
            command = [
                sys.executable,
                "-m",
                "splitlab.cli",
                "run",
                str(path),
                "--workspace",
                str(self.workspace),
            ]
            logger.debug("starting %s", " ".join(command))
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
            with log.open("wb") as sink:
                # Its own session: a Ctrl-C at the server's terminal does not
                # reach the run, and a stop reaches only the run.
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            job = Job(
                job_id=job_id,
                scenario=scenario,
                path=path,
                log=log,
                process=process,
                started_at=time.time(),
                after_run_id=_latest_run_id(self.workspace),
                scenario_hash=loaded.fingerprint(),
            )
            self._jobs[job_id] = job
        threading.Thread(
            target=self._reap, args=(job,), name=f"job-{job_id}", daemon=True
        ).start()
        return job

    def _reap(self, job: Job) -> None:
        job.returncode = job.process.wait()
        self.resolve(job)
        job.done.set()
        logger.info("run job %d ended with code %d", job.job_id, job.returncode)

    def get(self, job_id: int) -> Job:
        """The job ``job_id``; 404 if there is none."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise ApiError(
                404, f"no run job {job_id}", field="job_id", value=job_id
            ) from None

    def jobs(self) -> list[Job]:
        """Every job started since the server started, oldest first."""
        return [self._jobs[key] for key in sorted(self._jobs)]

    def resolve(self, job: Job) -> int | None:
        """The store's run of ``job``, once the CLI has created it."""
        if job.run_id is None:
            with _store(self.workspace) as store:
                if store is not None:
                    for run in store.runs():
                        if (
                            run.run_id > job.after_run_id
                            and run.scenario_hash == job.scenario_hash
                            and run.run_id not in self._claimed(job)
                        ):
                            job.run_id = run.run_id
                            break
        return job.run_id

    def _claimed(self, job: Job) -> set[int]:
        return {
            other.run_id
            for other in self._jobs.values()
            if other is not job and other.run_id is not None
        }

    def stop(self, job: Job) -> None:
        """SIGTERM the CLI, which tears its testbed down; kill it if it hangs."""
        if not job.active:
            return
        job.stopping = True
        logger.debug("kill -TERM %d", job.process.pid)
        job.process.send_signal(signal.SIGTERM)
        threading.Thread(
            target=self._kill_if_hung, args=(job,), name="stop", daemon=True
        ).start()

    def _kill_if_hung(self, job: Job) -> None:
        if not job.done.wait(STOP_GRACE_S) and job.active:
            logger.warning("run job %d ignored SIGTERM; killing it", job.job_id)
            logger.debug("kill -KILL -%d", job.process.pid)
            os.killpg(job.process.pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """Stop every active job and wait for them, as the server exits."""
        for job in self.jobs():
            self.stop(job)
        for job in self.jobs():
            job.done.wait(STOP_GRACE_S + 5)


def _latest_run_id(workspace: Path) -> int:
    with _store(workspace) as store:
        return 0 if store is None else store.latest_run_id() or 0


@contextmanager
def _store(workspace: Path) -> Iterator[ResultStore | None]:
    """The workspace's results store, or ``None`` while it does not exist."""
    path = workspace / STORE_NAME
    if not path.exists():
        yield None
        return
    store = ResultStore(path)
    try:
        yield store
    finally:
        store.close()


# Progress and results ------------------------------------------------------


def run_progress(store: ResultStore, run_id: int) -> dict[str, Any]:
    """Where a run is: its phase and the tasks each device has finished.

    Phases: ``connecting`` (nodes starting), ``profiling`` (``profiled`` of
    ``nodes`` done), ``running`` (after the plan), ``verifying`` (every task
    in), then the run's final status, ``completed`` or ``incomplete``.
    """
    run = store.run(run_id)
    scenario = yaml.safe_load(run.scenario_yaml) or {}
    devices = [d["name"] for d in scenario.get("devices", [])]
    per_device = int((scenario.get("workload") or {}).get("tasks_per_device", 20))
    expected = dict.fromkeys(devices, per_device)
    predicted = store.task_counts(run_id, table="predictions")
    if predicted:
        expected = {device: predicted.get(device, 0) for device in devices}
    done = store.task_counts(run_id)
    kinds = [kind for _, _, kind, _ in store.events(run_id)]
    profiled = kinds.count("profiled")
    phase: str
    if run.status != "running":
        phase = run.status
    elif sum(done.values()) >= sum(expected.values()) > 0:
        phase = "verifying"
    elif "plan" in kinds:
        phase = "running"
    elif profiled or "connected" in kinds:
        phase = "profiling"
    else:
        phase = "connecting"
    return {
        "run_id": run_id,
        "status": run.status,
        "reason": run.reason,
        "phase": phase,
        "profiled": profiled,
        "nodes": len(devices) + 1,
        "devices": [
            {"device": d, "done": done.get(d, 0), "expected": expected[d]}
            for d in devices
        ],
        "done": sum(done.values()),
        "expected": sum(expected.values()),
    }


def _run_json(store: ResultStore, run_id: int) -> dict[str, Any]:
    run = store.run(run_id)
    record = asdict(run)
    record.pop("scenario_yaml")
    return {**record, "duration_s": _duration(run.started_at, run.finished_at)}


def _duration(started: float, finished: float | None) -> float | None:
    return None if finished is None else finished - started


def _summary_json(store: ResultStore, run_id: int) -> dict[str, Any]:
    summary = summarise(store, run_id)
    return _safe_dict(
        {
            "run": _run_json(store, run_id),
            "rows": [asdict(row) for row in summary.rows],
            "verified": summary.verified,
            "matched": summary.matched,
            "accuracy": summary.accuracy,
            "limit_mechanisms": list(summary.limit_mechanisms),
            "deadline_misses": summary.deadline_misses,
            "overall": OVERALL,
        }
    )


def _devices(store: ResultStore, run_id: int) -> list[str]:
    return [node.node for node in store.nodes(run_id) if node.role == "device"]


def _stage_names(store: ResultStore, run_id: int) -> list[str]:
    profiles = store.profiles(run_id)
    if not profiles:
        return []
    return [stage.name for stage in next(iter(profiles.values())).stages]


def _run_figure(store: ResultStore, run_id: int, name: str) -> bytes:
    from splitlab import plot

    devices = _devices(store, run_id)
    tasks = store.tasks(run_id)
    stages = _stage_names(store, run_id)
    if name == "breakdown":
        figure = plot.delay_breakdown_figure(summarise(store, run_id).rows)
    elif name == "schedule":
        scenario = yaml.safe_load(store.run(run_id).scenario_yaml) or {}
        slices = store.slices(run_id)
        workers = int((scenario.get("base_station") or {}).get("workers", 1))
        workers = max([workers, *(piece.worker + 1 for piece in slices)])
        figure = plot.schedule_figure(
            slices,
            devices,
            workers=workers,
            offloaded=sum(1 for task in tasks if task.cut < len(stages)),
        )
    elif name == "cdf":
        figure = plot.delay_cdf_figure(tasks, devices)
    elif name == "prediction":
        figure = plot.prediction_figure(tasks, store.predictions(run_id), devices)
    elif name == "cuts":
        figure = plot.cuts_figure(store.cuts(run_id), stages, devices)
    else:
        bs = [node.node for node in store.nodes(run_id) if node.role == "bs"]
        figure = plot.profile_figure(store.profiles(run_id), [*bs, *devices])
    return plot.png_bytes(figure)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


# The application --------------------------------------------------------------


def create_app(workspace: Path, *, token: str | None) -> FastAPI:
    """The partitioning manager over ``workspace``.

    Parameters
    ----------
    workspace:
        The folder holding ``scenarios/``, ``algorithms/``, ``logs/`` and
        the results store; created if absent.
    token:
        The bearer token every API call must carry, or ``None`` to answer
        loopback clients without one.
    """
    workspace = workspace.resolve()
    scenarios_dir = workspace / "scenarios"
    algorithms_dir = workspace / "algorithms"
    for folder in (scenarios_dir, algorithms_dir):
        folder.mkdir(parents=True, exist_ok=True)
    manager = RunManager(workspace)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(manager.shutdown)

    app = FastAPI(
        title="splitlab partitioning manager",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.workspace = workspace

    # Access --------------------------------------------------------------

    @app.middleware("http")
    async def guard(request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if path.startswith("/api/") and path not in _PUBLIC_PATHS:
            refusal = _refusal(request, token)
            if refusal is not None:
                return refusal
        return await call_next(request)

    @app.exception_handler(SplitlabError)
    async def splitlab_error(_: Request, error: SplitlabError) -> JSONResponse:
        status = 422 if isinstance(error, ConfigError) else 500
        return JSONResponse(
            {"detail": {"field": None, "value": None, "message": str(error)}},
            status_code=status,
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0]
        location = ".".join(str(part) for part in first["loc"][1:]) or str(
            first["loc"][0]
        )
        message = f"{location}: {first['msg']}"
        value = first.get("input")
        return JSONResponse(
            {
                "detail": {
                    "field": location,
                    "value": _json_safe(value) if first["type"] != "missing" else None,
                    "message": message,
                }
            },
            status_code=422,
        )

    # Registries ------------------------------------------------------------

    @app.get("/api/registries", tags=["registries"])
    def registries() -> dict[str, Any]:
        """Everything a scenario can name: models, algorithms, schedulers..."""
        return {
            "models": [
                {"name": info.name, "description": info.description}
                for info in MODELS.values()
            ],
            "algorithms": sorted(ALGORITHMS),
            "schedulers": sorted(SCHEDULERS),
            # Shares come from this machine's calibration (measured once and
            # cached; see splitlab.calibration).
            "device_classes": {
                name: {
                    "cpu_share": calibration.share_of(name),
                    "memory_mb": spec.memory_mb,
                    "title": spec.title,
                }
                for name, spec in calibration.CLASSES.items()
            },
            "objectives": list(OBJECTIVES),
            "backends": list(get_args(Scenario.model_fields["backend"].annotation)),
            "datasets": list(get_args(DataConfig.model_fields["dataset"].annotation)),
            "arrivals": ["periodic", "poisson"],
            "wifi_range_m": wifi_range_m(),
        }

    @app.get("/api/schema", tags=["registries"])
    def schema() -> dict[str, Any]:
        """The scenario file's JSON schema (which fields this version accepts)."""
        return Scenario.model_json_schema(by_alias=True)

    @app.post("/api/placement", tags=["placement"])
    def placement(body: PlacementBody) -> dict[str, Any]:
        """The WiFi link a device's position implies, with its radio figures."""
        for label, point in (
            ("device", body.device),
            ("base_station", body.base_station),
        ):
            if not all(math.isfinite(v) and abs(v) <= 100_000 for v in point):
                raise ApiError(
                    422,
                    f"{label}: a position is two numbers within 100 km",
                    field=label,
                    value=list(point),
                )
        link = wifi_link(math.dist(body.device, body.base_station))
        fields = None
        if link.reachable:
            fields = link_fields(body.device, body.base_station)
        return _safe_dict(
            {
                **asdict(link),
                "reachable": link.reachable,
                "range_m": wifi_range_m(),
                "link": fields,
            }
        )

    # Scenarios -------------------------------------------------------------

    def scenario_file(name: str, *, exists: bool = True) -> Path:
        if not NAME_PATTERN.fullmatch(name) or name.endswith(".yaml"):
            raise ApiError(
                400,
                "a scenario name is 1-64 letters, digits, '_', '-' or '.', "
                "not starting with '.'",
                field="name",
                value=name,
            )
        path = (scenarios_dir / f"{name}.yaml").resolve()
        if path.parent != scenarios_dir:
            raise ApiError(
                400, "scenario outside the workspace", field="name", value=name
            )
        if exists and not path.is_file():
            raise ApiError(404, f"no scenario {name!r}", field="name", value=name)
        return path

    def describe(path: Path) -> dict[str, Any]:
        text = path.read_text(encoding="utf-8")
        entry: dict[str, Any] = {
            "name": path.stem,
            "path": str(path),
            "yaml": text,
            "modified_at": path.stat().st_mtime,
        }
        try:
            entry["data"] = yaml.safe_load(text)
        except yaml.YAMLError:
            entry["data"] = None
        try:
            scenario = load_scenario(path)
        except ConfigError as error:
            return {**entry, "valid": False, "error": str(error), "scenario": None}
        return {
            **entry,
            "valid": True,
            "error": None,
            "scenario": scenario.model_dump(mode="json", by_alias=True),
        }

    def validated(name: str, data: dict[str, Any]) -> Scenario:
        try:
            return parse_scenario(data, source=f"{name}.yaml")
        except ConfigError as error:
            raise _config_error(error) from None

    @app.get("/api/scenarios", tags=["scenarios"])
    def list_scenarios() -> list[dict[str, Any]]:
        """Every scenario file in the workspace, whether it is valid."""
        entries = []
        for path in sorted(scenarios_dir.glob("*.yaml")):
            entry = describe(path)
            scenario = entry.pop("scenario")
            entry.pop("yaml")
            entry.pop("data")
            entry["devices"] = len(scenario["devices"]) if scenario else None
            entry["model"] = scenario["model"] if scenario else None
            entries.append(entry)
        return entries

    @app.get("/api/scenarios/{name}", tags=["scenarios"])
    def get_scenario(name: str) -> dict[str, Any]:
        """A scenario: its YAML, its data, and the validated form with links."""
        return describe(scenario_file(name))

    @app.put("/api/scenarios/{name}", tags=["scenarios"])
    def save_scenario(name: str, body: ScenarioBody) -> dict[str, Any]:
        """Create or replace ``scenarios/NAME.yaml`` after validating it."""
        path = scenario_file(name, exists=False)
        if body.data.get("name") != name:
            raise ApiError(
                422,
                f"name: the scenario's name must be its file's name {name!r}",
                field="name",
                value=body.data.get("name"),
            )
        validated(name, body.data)
        created = not path.exists()
        temporary = path.with_suffix(".yaml.tmp")
        temporary.write_text(
            scenario_yaml(body.data),
            encoding="utf-8",
        )
        temporary.replace(path)
        logger.info("saved scenario %s", path)
        return {**describe(path), "created": created}

    @app.post("/api/scenarios/validate", tags=["scenarios"])
    def validate_scenario(body: ScenarioBody) -> dict[str, Any]:
        """Validate without saving: the scenario as a run would see it."""
        name = str(body.data.get("name", "scenario"))
        scenario = validated(name, body.data)
        return {
            "valid": True,
            "yaml": scenario_yaml(body.data),
            "scenario": scenario.model_dump(mode="json", by_alias=True),
        }

    @app.post("/api/scenarios/{name}/duplicate", tags=["scenarios"], status_code=201)
    def duplicate_scenario(name: str, body: DuplicateBody) -> dict[str, Any]:
        """Copy a scenario under a new name (its ``name`` field follows)."""
        source = scenario_file(name)
        target = scenario_file(body.name, exists=False)
        if target.exists():
            raise ApiError(
                409, f"scenario {body.name!r} exists", field="name", value=body.name
            )
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ApiError(
                422, f"{name}.yaml is not a mapping", field="name", value=name
            )
        data["name"] = body.name
        target.write_text(scenario_yaml(data), encoding="utf-8")
        return describe(target)

    @app.delete("/api/scenarios/{name}", tags=["scenarios"], status_code=204)
    def delete_scenario(name: str) -> Response:
        """Remove a scenario file (its runs stay in the store)."""
        scenario_file(name).unlink()
        return Response(status_code=204)

    # Algorithms ------------------------------------------------------------

    index_path = algorithms_dir / "index.json"

    def read_index() -> dict[str, Any]:
        if not index_path.exists():
            return {}
        loaded = json.loads(index_path.read_text(encoding="utf-8"))
        return loaded if isinstance(loaded, dict) else {}

    def algorithm_entry(file_name: str, record: dict[str, Any]) -> dict[str, Any]:
        path = algorithms_dir / file_name
        return {
            **record,
            "file": file_name,
            "path": str(path),
            "references": [f"{path}:{name}" for name in record.get("callables", [])],
        }

    @app.get("/api/algorithms", tags=["algorithms"])
    def list_algorithms() -> list[dict[str, Any]]:
        """Uploaded algorithm files with who uploaded them and when."""
        return [
            algorithm_entry(name, record)
            for name, record in sorted(read_index().items())
            if (algorithms_dir / name).is_file()
        ]

    @app.post("/api/algorithms", tags=["algorithms"], status_code=201)
    async def upload_algorithm(
        request: Request, file: Annotated[UploadFile, File()]
    ) -> dict[str, Any]:
        """Store an algorithm ``.py`` file and mark it trusted.

        The file runs as Python code on the base station when a scenario
        names it.  It is parsed here to list its functions and classes, and
        never imported by the server.
        """
        file_name = file.filename or ""
        if not ALGORITHM_FILE_PATTERN.fullmatch(file_name):
            raise ApiError(
                422,
                "file: an algorithm file is NAME.py with 1-64 letters, digits, "
                "'_' or '-' in NAME",
                field="file",
                value=file_name,
            )
        content = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(content) > MAX_UPLOAD_BYTES:
            raise ApiError(
                413,
                f"file: {file_name} is over {MAX_UPLOAD_BYTES} bytes",
                field="file",
                value=file_name,
            )
        try:
            tree = ast.parse(content.decode("utf-8"), filename=file_name)
        except (UnicodeDecodeError, SyntaxError) as error:
            raise ApiError(
                422,
                f"file: {file_name} is not Python source: {error}",
                field="file",
                value=file_name,
            ) from None
        callables = [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
            and not node.name.startswith("_")
        ]
        (algorithms_dir / file_name).write_bytes(content)
        client = request.client.host if request.client else None
        record = {
            "sha256": hashlib.sha256(content).hexdigest(),
            "size_bytes": len(content),
            "uploaded_at": time.time(),
            "client": client,
            "authenticated_by": "token" if token else "loopback",
            "trusted": True,
            "callables": callables,
        }
        index = read_index()
        index[file_name] = record
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True))
        logger.info("stored algorithm %s from %s", file_name, client)
        return algorithm_entry(file_name, record)

    # Runs ------------------------------------------------------------------

    def job_json(job: Job) -> dict[str, Any]:
        run_id = manager.resolve(job)
        progress = None
        if run_id is not None:
            with _store(workspace) as store:
                assert store is not None
                progress = run_progress(store, run_id)
        if job.active:
            state = "stopping" if job.stopping else "running"
        else:
            state = "finished" if job.returncode == 0 else "failed"
        return {
            "job_id": job.job_id,
            "scenario": job.scenario,
            "pid": job.process.pid,
            "state": state,
            "returncode": job.returncode,
            "run_id": run_id,
            "started_at": job.started_at,
            "phase": (
                progress["phase"]
                if progress
                else ("preparing" if job.active else "failed")
            ),
            "progress": progress,
        }

    @app.post("/api/runs", tags=["runs"], status_code=202)
    def start_run(body: RunBody) -> dict[str, Any]:
        """Run a saved scenario as ``splitlab run`` in its own process group."""
        path = scenario_file(body.scenario)
        try:
            job = manager.start(body.scenario, path)
        except ConfigError as error:
            raise _config_error(error) from None
        return job_json(job)

    @app.get("/api/runs", tags=["runs"])
    def list_runs() -> dict[str, Any]:
        """Every run in the store, and the jobs started by this server."""
        runs = []
        with _store(workspace) as store:
            if store is not None:
                for run in store.runs():
                    runs.append(_json_safe(_run_json(store, run.run_id)))
        return {"runs": runs, "jobs": [job_json(job) for job in manager.jobs()]}

    @app.get("/api/jobs/{job_id}", tags=["runs"])
    def job_status(job_id: int) -> dict[str, Any]:
        """A started run's state and live progress."""
        return job_json(manager.get(job_id))

    @app.post("/api/jobs/{job_id}/stop", tags=["runs"])
    def stop_job(job_id: int) -> dict[str, Any]:
        """Stop a run: SIGTERM, and the CLI tears its testbed down."""
        job = manager.get(job_id)
        manager.stop(job)
        return job_json(job)

    @app.get("/api/jobs/{job_id}/log", tags=["runs"])
    async def job_log(job_id: int) -> StreamingResponse:
        """The run's output as ``text/event-stream``, one event per line.

        The stream ends with an ``end`` event carrying the exit code.
        """
        job = manager.get(job_id)
        return StreamingResponse(
            _follow(job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # Results ---------------------------------------------------------------

    @contextmanager
    def existing_run(run_id: int) -> Iterator[ResultStore]:
        with _store(workspace) as store:
            if store is None:
                raise ApiError(404, f"no run {run_id}", field="run_id", value=run_id)
            try:
                store.run(run_id)
            except ConfigError:
                raise ApiError(
                    404, f"no run {run_id}", field="run_id", value=run_id
                ) from None
            yield store

    @app.get("/api/runs/{run_id}", tags=["results"])
    def run_status(run_id: int) -> dict[str, Any]:
        """A run's row, its scenario and its progress."""
        with existing_run(run_id) as store:
            return _safe_dict(
                {
                    **_run_json(store, run_id),
                    "scenario_yaml": store.run(run_id).scenario_yaml,
                    "progress": run_progress(store, run_id),
                }
            )

    @app.get("/api/runs/{run_id}/summary", tags=["results"])
    def run_summary(run_id: int) -> dict[str, Any]:
        """Delay statistics per device and overall (seconds)."""
        with existing_run(run_id) as store:
            return _summary_json(store, run_id)

    @app.get("/api/runs/{run_id}/tasks", tags=["results"])
    def run_tasks(run_id: int) -> list[dict[str, Any]]:
        """Every finished task with its delay broken down, and its prediction."""
        with existing_run(run_id) as store:
            predicted = {p.task_id: p for p in store.predictions(run_id)}
            rows = []
            for task in store.tasks(run_id):
                record = asdict(task)
                record.pop("logits")
                guess = predicted.get(task.task_id)
                record["predicted_delay_s"] = guess.delay_s if guess else None
                rows.append(record)
            return _safe_list(rows)

    @app.get("/api/runs/{run_id}/schedule", tags=["results"])
    def run_schedule(run_id: int) -> list[dict[str, Any]]:
        """The BS schedule: every slice a worker ran (seconds from the start)."""
        with existing_run(run_id) as store:
            return [asdict(piece) for piece in store.slices(run_id)]

    @app.get("/api/runs/{run_id}/delays", tags=["results"])
    def run_delays(run_id: int) -> dict[str, Any]:
        """Each device's end-to-end delays, sorted, with their percentiles."""
        with existing_run(run_id) as store:
            by_device: dict[str, list[float]] = {d: [] for d in _devices(store, run_id)}
            for task in store.tasks(run_id):
                by_device.setdefault(task.device, []).append(task.delay_s)
            return _safe_dict(
                {
                    device: {
                        "delays_s": sorted(values),
                        "p50_s": _percentile(values, 50),
                        "p95_s": _percentile(values, 95),
                        "max_s": max(values, default=None),
                    }
                    for device, values in by_device.items()
                }
            )

    @app.get("/api/runs/{run_id}/predictions", tags=["results"])
    def run_predictions(run_id: int) -> list[dict[str, Any]]:
        """Each task's predicted delay beside its measured one (seconds)."""
        with existing_run(run_id) as store:
            measured = {task.task_id: task for task in store.tasks(run_id)}
            return _safe_list(
                [
                    {
                        "task_id": p.task_id,
                        "device": p.device,
                        "cut": p.cut,
                        "predicted_s": p.delay_s,
                        "measured_s": (
                            measured[p.task_id].delay_s
                            if p.task_id in measured
                            else None
                        ),
                    }
                    for p in store.predictions(run_id)
                ]
            )

    @app.get("/api/runs/{run_id}/cuts", tags=["results"])
    def run_cuts(run_id: int) -> dict[str, Any]:
        """The scheme: each device's cut, its link and the model's stages."""
        with existing_run(run_id) as store:
            cuts = store.cuts(run_id)
            stages = _stage_names(store, run_id)
            profiles = store.profiles(run_id)
            devices = []
            for node in store.nodes(run_id):
                if node.role != "device":
                    continue
                cut = cuts.get(node.node)
                profile = profiles.get(node.node)
                devices.append(
                    {
                        "device": node.node,
                        "cut": cut,
                        "after_stage": (
                            None if cut is None or cut == 0 else stages[cut - 1]
                        ),
                        "cut_bytes": (
                            profile.cut_bytes(cut)
                            if profile is not None and cut is not None
                            else None
                        ),
                        "link": dict(node.link) if node.link else None,
                        "cpu_share": node.cpu_share,
                    }
                )
            return {"stages": stages, "devices": devices}

    @app.get("/api/runs/{run_id}/figures/{figure}.png", tags=["results"])
    def run_figure(run_id: int, figure: str) -> Response:
        """A figure of the run as splitlab's reports draw it (PNG)."""
        if figure not in RUN_FIGURES:
            raise ApiError(
                404,
                f"no figure {figure!r}; figures: {', '.join(RUN_FIGURES)}",
                field="figure",
                value=figure,
            )
        with existing_run(run_id) as store:
            return _png(_run_figure(store, run_id, figure))

    @contextmanager
    def comparison_store(runs: Sequence[int]) -> Iterator[ResultStore]:
        if len(runs) < 2:
            raise ApiError(
                422, "runs: compare two or more runs", field="runs", value=list(runs)
            )
        with _store(workspace) as store:
            for run_id in runs:
                if store is None:
                    raise ApiError(404, f"no run {run_id}", field="runs", value=run_id)
                try:
                    store.run(run_id)
                except ConfigError:
                    raise ApiError(
                        404, f"no run {run_id}", field="runs", value=run_id
                    ) from None
            assert store is not None
            yield store

    @app.get("/api/compare", tags=["results"])
    def compare(runs: Annotated[list[int], Query()]) -> dict[str, Any]:
        """Runs side by side: each run's summary and the fields that differ."""
        with comparison_store(runs) as store:
            comparison = compare_runs(store, runs)
            return _safe_dict(
                {
                    "title": comparison.title,
                    "runs": [asdict(run) for run in comparison.runs],
                    "summaries": [_summary_json(store, run_id) for run_id in runs],
                }
            )

    @app.get("/api/compare/figures/{figure}.png", tags=["results"])
    def compare_figure(figure: str, runs: Annotated[list[int], Query()]) -> Response:
        """Mean and p95 delay of the runs (``comparison``), or cut against rate."""
        from splitlab import plot

        if figure not in COMPARE_FIGURES:
            raise ApiError(
                404,
                f"no figure {figure!r}; figures: {', '.join(COMPARE_FIGURES)}",
                field="figure",
                value=figure,
            )
        with comparison_store(runs) as store:
            comparison = compare_runs(store, runs)
            drawn = (
                plot.comparison_figure(comparison)
                if figure == "comparison"
                else plot.cut_rate_figure(comparison)
            )
            return _png(plot.png_bytes(drawn))

    # The page --------------------------------------------------------------

    app.mount("/", StaticFiles(directory=UI_DIR, html=True), name="ui")
    return app


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _follow(job: Job) -> AsyncIterator[str]:
    """The job's log as server-sent events, until the job has ended."""
    offset = 0
    pending = b""
    while True:
        finished = not job.active
        with job.log.open("rb") as source:
            source.seek(offset)
            chunk = source.read()
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", errors="replace").rstrip("\r")
            yield f"data: {text}\n\n"
        if finished and not chunk:
            if pending:
                yield f"data: {pending.decode('utf-8', errors='replace')}\n\n"
            yield f"event: end\ndata: {job.returncode}\n\n"
            return
        await asyncio.sleep(0.2)


def _refusal(request: Request, token: str | None) -> JSONResponse | None:
    """Why a request may not reach the API, as a response, or ``None``."""
    if token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JSONResponse(
                {
                    "detail": {
                        "field": "Authorization",
                        "value": None,
                        "message": "this server wants 'Authorization: Bearer TOKEN' "
                        "with the token it printed at start",
                    }
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None
    client = request.client.host if request.client else ""
    host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
    if client not in LOOPBACK_HOSTS or host not in LOOPBACK_HOSTS:
        return JSONResponse(
            {
                "detail": {
                    "field": "Host",
                    "value": host,
                    "message": "without a token this server answers only "
                    "loopback clients that name a loopback host",
                }
            },
            status_code=403,
        )
    if request.method not in ("GET", "HEAD", "OPTIONS") and (
        request.headers.get(CLIENT_HEADER.lower()) != "1"
    ):
        return JSONResponse(
            {
                "detail": {
                    "field": CLIENT_HEADER,
                    "value": None,
                    "message": f"requests that change something carry "
                    f"'{CLIENT_HEADER}: 1'",
                }
            },
            status_code=403,
        )
    return None
