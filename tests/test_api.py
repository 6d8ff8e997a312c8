"""The partitioning manager's HTTP API: every endpoint, its refusals, its token.

Runs are real: the API starts ``splitlab run`` subprocesses on the local
testbed, and the results endpoints read what they recorded.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from splitlab.api import access_token, create_app
from splitlab.calibration import share_of
from splitlab.experiment import prepare_weights
from splitlab.placement import wifi_link
from splitlab.results import ResultStore
from splitlab.scenario import load_scenario, parse_scenario

LOOPBACK = ("127.0.0.1", 40000)


def scenario_data(
    name: str, *, tasks: int = 3, period_ms: float = 50
) -> dict[str, Any]:
    """Two placed devices running the small AlexNet (weights shared with test_run)."""
    return {
        "name": name,
        "seed": 2,
        "model": "alexnet-small",
        "training": {"epochs": 1},
        "workload": {"tasks_per_device": tasks, "period_ms": period_ms},
        "profiling": {"warmup": 1, "repeats": 3},
        "algorithm": "greedy",
        "base_station": {"position_m": [0, 0]},
        "devices": [
            {"name": "near", "cpu_share": 0.5, "position_m": [10, 0]},
            {"name": "far", "cpu_share": 0.5, "position_m": [0, 100]},
        ],
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def client(workspace: Path) -> Iterator[TestClient]:
    app = create_app(workspace, token=None)
    with TestClient(
        app, base_url="http://127.0.0.1", client=LOOPBACK, headers={"X-Splitlab": "1"}
    ) as test_client:
        yield test_client


def detail(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body["detail"], dict), body
    return body["detail"]  # type: ignore[no-any-return]


# Registries and placement --------------------------------------------------


def test_registries_name_what_a_scenario_can_use(client: TestClient) -> None:
    answer = client.get("/api/registries").json()
    assert "alexnet-small" in {model["name"] for model in answer["models"]}
    assert {"greedy", "local-only", "offload-all"} <= set(answer["algorithms"])
    assert {"fcfs", "sjf", "edf"} <= set(answer["schedulers"])
    rpi4 = answer["device_classes"]["rpi4"]
    assert rpi4["cpu_share"] == pytest.approx(share_of("rpi4"))
    assert rpi4["memory_mb"] == 4096
    assert "sentences" in answer["datasets"]
    assert answer["objectives"] == ["total", "variance", "max"]
    assert answer["backends"] == ["local", "netns", "ssh"]
    assert 130 < answer["wifi_range_m"] < 140


def test_schema_is_the_scenario_file_s(client: TestClient) -> None:
    schema = client.get("/api/schema").json()
    assert "devices" in schema["properties"]
    assert "position_m" in schema["$defs"]["DeviceConfig"]["properties"]


def test_placement_derives_the_link_of_a_distance(client: TestClient) -> None:
    answer = client.post(
        "/api/placement", json={"device": [33, 4], "base_station": [3, -36]}
    ).json()
    expected = wifi_link(50.0)
    assert answer["distance_m"] == pytest.approx(50.0)
    assert answer["rate_mbps"] == pytest.approx(expected.rate_mbps)
    assert answer["mcs"] == expected.mcs
    assert answer["loss_percent"] == pytest.approx(expected.loss_percent)
    assert answer["link"]["rate_mbps"] == round(expected.rate_mbps, 3)

    beyond = client.post("/api/placement", json={"device": [500, 0]}).json()
    assert beyond["reachable"] is False
    assert beyond["link"] is None and beyond["latency_ms"] is None


def test_placement_names_a_bad_position(client: TestClient) -> None:
    response = client.post("/api/placement", json={"device": [1, "east"]})
    assert response.status_code == 422
    assert detail(response)["field"] == "device.1"
    assert detail(response)["value"] == "east"
    response = client.post("/api/placement", json={"device": [1e9, 0]})
    assert response.status_code == 422
    assert detail(response)["field"] == "device"


# Scenarios -----------------------------------------------------------------


def test_a_saved_scenario_is_the_file_the_cli_reads(
    client: TestClient, workspace: Path
) -> None:
    data = scenario_data("saved")
    response = client.put("/api/scenarios/saved", json={"data": data})
    assert response.status_code == 200, response.text
    assert response.json()["created"] is True
    path = workspace / "scenarios" / "saved.yaml"
    assert yaml.safe_load(path.read_text()) == data
    assert "position_m: [10, 0]" in path.read_text()
    loaded = load_scenario(path)
    assert loaded.devices[0].link.rate_mbps == pytest.approx(
        wifi_link(10).rate_mbps, abs=1e-3
    )

    again = client.put("/api/scenarios/saved", json={"data": data}).json()
    assert again["created"] is False
    got = client.get("/api/scenarios/saved").json()
    assert got["data"] == data and got["valid"] is True
    assert got["scenario"]["devices"][1]["link"]["rate_mbps"] == pytest.approx(
        wifi_link(100).rate_mbps, abs=1e-3
    )
    listed = {entry["name"]: entry for entry in client.get("/api/scenarios").json()}
    assert listed["saved"]["devices"] == 2 and listed["saved"]["valid"] is True


def test_an_invalid_scenario_is_refused_naming_the_field(client: TestClient) -> None:
    data = scenario_data("broken")
    data["workload"]["tasks_per_device"] = 0
    response = client.put("/api/scenarios/broken", json={"data": data})
    assert response.status_code == 422
    problem = detail(response)
    assert problem["field"] == "workload.tasks_per_device"
    assert problem["value"] == "0"
    assert problem["message"].startswith("broken.yaml: workload.tasks_per_device:")
    assert client.get("/api/scenarios/broken").status_code == 404

    data = scenario_data("other")
    response = client.put("/api/scenarios/mismatch", json={"data": data})
    assert response.status_code == 422
    assert detail(response)["field"] == "name"
    assert detail(response)["value"] == "other"

    response = client.put("/api/scenarios/x", json={"nodata": 1})
    assert response.status_code == 422
    assert detail(response)["field"] == "data"


def test_validate_without_saving(client: TestClient, workspace: Path) -> None:
    answer = client.post(
        "/api/scenarios/validate", json={"data": scenario_data("draft")}
    ).json()
    assert answer["valid"] is True
    assert yaml.safe_load(answer["yaml"])["name"] == "draft"
    assert not (workspace / "scenarios" / "draft.yaml").exists()

    data = scenario_data("draft")
    data["devices"][1]["position_m"] = [0, 400]
    response = client.post("/api/scenarios/validate", json={"data": data})
    assert response.status_code == 422
    assert "devices[1] at 400.0 m" in detail(response)["message"]
    data = scenario_data("draft")
    data["scheduler"] = "lifo"
    problem = detail(client.post("/api/scenarios/validate", json={"data": data}))
    assert problem["field"] == "scheduler" and "lifo" in problem["message"]


def test_duplicate_and_delete(client: TestClient, workspace: Path) -> None:
    client.put("/api/scenarios/original", json={"data": scenario_data("original")})
    response = client.post("/api/scenarios/original/duplicate", json={"name": "copy"})
    assert response.status_code == 201
    assert response.json()["data"]["name"] == "copy"
    assert load_scenario(workspace / "scenarios" / "copy.yaml").name == "copy"
    again = client.post("/api/scenarios/original/duplicate", json={"name": "copy"})
    assert again.status_code == 409 and detail(again)["value"] == "copy"

    assert client.delete("/api/scenarios/copy").status_code == 204
    assert not (workspace / "scenarios" / "copy.yaml").exists()
    missing = client.delete("/api/scenarios/copy")
    assert missing.status_code == 404 and detail(missing)["field"] == "name"


@pytest.mark.parametrize(
    "name", ["..", ".hidden", "a..b/../../etc", "x.yaml", "a b", "%2e%2e", "é"]
)
def test_path_traversal_in_scenario_names_is_refused(
    client: TestClient, workspace: Path, name: str
) -> None:
    outside = workspace.parent / "outside.yaml"
    outside.write_text("name: outside\n")
    for method, path, body in (
        ("GET", f"/api/scenarios/{name}", None),
        ("PUT", f"/api/scenarios/{name}", {"data": {"name": name}}),
        ("DELETE", f"/api/scenarios/{name}", None),
        ("POST", "/api/scenarios/original/duplicate", {"name": name}),
    ):
        response = client.request(method, path, json=body)
        # A name with dot segments is resolved by the client before it is
        # sent, and then matches no endpoint (404, 405); every other reaches
        # the API and is refused by name.
        assert response.status_code in (400, 404, 405), (method, name, response.text)
        if "/" not in name and name != "..":
            assert response.status_code == 400, (method, name)
            assert detail(response)["field"] == "name"
    assert outside.read_text() == "name: outside\n"
    assert sorted(p.name for p in workspace.parent.glob("*.yaml")) == ["outside.yaml"]


def test_encoded_slashes_do_not_leave_the_folder(
    client: TestClient, workspace: Path
) -> None:
    (workspace / "secret.yaml").write_text("name: secret\n")
    for path in ("/api/scenarios/..%2Fsecret", "/api/scenarios/%2E%2E%2Fsecret"):
        response = client.get(path)
        assert response.status_code in (400, 404)
        assert "secret" not in response.text.replace("..%2Fsecret", "")


# Algorithms ----------------------------------------------------------------

ALGORITHM = b"""
import pathlib
pathlib.Path(__file__).with_name("imported.marker").write_text("ran")

def slowest_offload(problem):
    return {device: 0 for device in problem.devices}

class Keep:
    def __call__(self, problem):
        return {}
"""


def test_upload_stores_and_marks_trusted_without_importing(
    client: TestClient, workspace: Path
) -> None:
    response = client.post(
        "/api/algorithms",
        files={"file": ("mine.py", io.BytesIO(ALGORITHM), "text/x-python")},
    )
    assert response.status_code == 201, response.text
    entry = response.json()
    stored = workspace / "algorithms" / "mine.py"
    assert stored.read_bytes() == ALGORITHM
    assert not (workspace / "algorithms" / "imported.marker").exists()
    assert entry["callables"] == ["slowest_offload", "Keep"]
    assert entry["references"][0] == f"{stored}:slowest_offload"
    assert entry["trusted"] is True and entry["client"] == "127.0.0.1"
    assert entry["authenticated_by"] == "loopback"
    assert time.time() - entry["uploaded_at"] < 60
    listed = client.get("/api/algorithms").json()
    assert [item["file"] for item in listed] == ["mine.py"]
    # A scenario can name it; the file is only imported where the plan is made.
    data = scenario_data("custom")
    data["algorithm"] = entry["references"][0]
    assert client.put("/api/scenarios/custom", json={"data": data}).status_code == 200
    assert not (workspace / "algorithms" / "imported.marker").exists()


@pytest.mark.parametrize(
    ("name", "content", "status"),
    [
        ("../evil.py", b"x = 1\n", 422),
        ("notes.txt", b"x = 1\n", 422),
        ("bad.py", b"def (:\n", 422),
        ("latin.py", b"\xff\xfe\x00", 422),
        ("big.py", b"#" * ((1 << 20) + 1), 413),
    ],
)
def test_bad_uploads_are_refused(
    client: TestClient, workspace: Path, name: str, content: bytes, status: int
) -> None:
    response = client.post(
        "/api/algorithms", files={"file": (name, io.BytesIO(content), "text/plain")}
    )
    assert response.status_code == status
    assert detail(response)["field"] == "file"
    assert not (workspace / "evil.py").exists()
    assert not (workspace / "algorithms" / Path(name).name).exists()


def test_without_a_token_only_loopback_clients_may_change_things(
    workspace: Path,
) -> None:
    app = create_app(workspace, token=None)
    files = {"file": ("x.py", io.BytesIO(b"x = 1\n"), "text/x-python")}
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as plain:
        # A page of another site cannot add the header without asking first.
        response = plain.post("/api/algorithms", files=files)
        assert response.status_code == 403
        assert detail(response)["field"] == "X-Splitlab"
    with TestClient(
        app, base_url="http://127.0.0.1", client=("192.0.2.7", 5000)
    ) as remote:
        assert remote.get("/api/registries").status_code == 403
    # DNS rebinding: a loopback client whose page names another host.
    with TestClient(app, base_url="http://attacker.example", client=LOOPBACK) as page:
        assert page.get("/api/scenarios").status_code == 403
    assert not (workspace / "algorithms" / "x.py").exists()


def test_a_token_is_needed_except_on_loopback() -> None:
    assert access_token("127.0.0.1", "given") is None
    assert access_token("::1", None) is None
    assert access_token("localhost", None) is None
    assert access_token("192.0.2.1", "given") == "given"
    generated = access_token("0.0.0.0", None)
    assert generated is not None and len(generated) >= 24
    assert access_token("0.0.0.0", None) != generated


# Token enforcement on a real server ------------------------------------------


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[str]:
    app = create_app(tmp_path, token="s3cret-token")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        listener.close()


def test_with_a_token_every_api_call_needs_it(token_server: str) -> None:
    with httpx.Client(base_url=token_server, timeout=10) as http:
        missing = http.get("/api/registries")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["detail"]["field"] == "Authorization"
        wrong = http.get(
            "/api/scenarios", headers={"Authorization": "Bearer s3cret-tokeN"}
        )
        assert wrong.status_code == 401
        upload = http.post(
            "/api/algorithms",
            files={"file": ("x.py", b"x = 1\n", "text/x-python")},
            headers={"Authorization": "Basic s3cret-token"},
        )
        assert upload.status_code == 401

        good = {"Authorization": "Bearer s3cret-token"}
        assert http.get("/api/registries", headers=good).status_code == 200
        stored = http.post(
            "/api/algorithms",
            files={"file": ("x.py", b"x = 1\n", "text/x-python")},
            headers=good,
        )
        assert stored.status_code == 201
        assert stored.json()["authenticated_by"] == "token"
        # The page and the API's description hold no data and need no token.
        assert http.get("/").status_code == 200
        assert http.get("/api/openapi.json").status_code == 200
        assert "swagger" in http.get("/api/docs").text.lower()


def test_openapi_describes_every_endpoint(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/api/registries",
        "/api/schema",
        "/api/placement",
        "/api/scenarios",
        "/api/scenarios/{name}",
        "/api/scenarios/validate",
        "/api/scenarios/{name}/duplicate",
        "/api/algorithms",
        "/api/runs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/stop",
        "/api/jobs/{job_id}/log",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/summary",
        "/api/runs/{run_id}/tasks",
        "/api/runs/{run_id}/schedule",
        "/api/runs/{run_id}/delays",
        "/api/runs/{run_id}/predictions",
        "/api/runs/{run_id}/cuts",
        "/api/runs/{run_id}/figures/{figure}.png",
        "/api/compare",
        "/api/compare/figures/{figure}.png",
    } == paths
    page = client.get("/")
    assert page.status_code == 200 and 'src="app.js"' in page.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")


# Runs and results --------------------------------------------------------------


def wait_for(client: TestClient, job_id: int, done: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there: {job}")


@pytest.fixture(scope="module")
def finished_run(client: TestClient) -> dict[str, Any]:
    """A completed run started through the API (weights trained beforehand)."""
    data = scenario_data("quick")
    prepare_weights(parse_scenario(data, source="test"))
    assert client.put("/api/scenarios/quick", json={"data": data}).status_code == 200
    started = client.post("/api/runs", json={"scenario": "quick"})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] == "running"
    finished = wait_for(client, job["job_id"], lambda j: j["state"] != "running", 240)
    assert finished["state"] == "finished", finished
    return finished  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_run_reports_progress_and_completes(
    client: TestClient, finished_run: dict[str, Any], workspace: Path
) -> None:
    assert finished_run["returncode"] == 0
    assert finished_run["phase"] == "completed"
    progress = finished_run["progress"]
    assert progress["devices"] == [
        {"device": "near", "done": 3, "expected": 3},
        {"device": "far", "done": 3, "expected": 3},
    ]
    assert progress["profiled"] == 3 == progress["nodes"]
    run_id = finished_run["run_id"]
    with ResultStore(workspace / "results.sqlite") as store:
        assert store.run(run_id).status == "completed"
        assert store.run(run_id).name == "quick"

    listed = client.get("/api/runs").json()
    assert [run["run_id"] for run in listed["runs"]] == [run_id]
    assert listed["jobs"][0]["job_id"] == finished_run["job_id"]
    status = client.get(f"/api/runs/{run_id}").json()
    assert status["progress"]["phase"] == "completed"
    assert yaml.safe_load(status["scenario_yaml"])["name"] == "quick"


@pytest.mark.slow
def test_the_log_streams_as_server_sent_events(
    client: TestClient, finished_run: dict[str, Any]
) -> None:
    with client.stream("GET", f"/api/jobs/{finished_run['job_id']}/log") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    lines = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[0].startswith("quick: 2 devices, model alexnet-small")
    assert any(line.startswith("plan by greedy") for line in lines)
    assert text.endswith("event: end\ndata: 0\n\n")


@pytest.mark.slow
def test_results_match_the_store(
    client: TestClient, finished_run: dict[str, Any], workspace: Path
) -> None:
    run_id = finished_run["run_id"]
    with ResultStore(workspace / "results.sqlite") as store:
        tasks = store.tasks(run_id)
        predictions = store.predictions(run_id)
        slices = store.slices(run_id)
        cuts = store.cuts(run_id)

    summary = client.get(f"/api/runs/{run_id}/summary").json()
    overall = summary["rows"][-1]
    assert overall["group"] == "all" and overall["tasks"] == 6
    assert overall["mean_s"] == pytest.approx(sum(t.delay_s for t in tasks) / 6)
    assert summary["matched"] == summary["verified"] == 6

    rows = client.get(f"/api/runs/{run_id}/tasks").json()
    assert [row["task_id"] for row in rows] == [t.task_id for t in tasks]
    assert rows[0]["delay_s"] == tasks[0].delay_s
    assert rows[0]["bs_wait_s"] == tasks[0].bs_wait_s
    assert "logits" not in rows[0]
    assert rows[0]["predicted_delay_s"] == predictions[0].delay_s

    schedule = client.get(f"/api/runs/{run_id}/schedule").json()
    assert len(schedule) == len(slices)
    delays = client.get(f"/api/runs/{run_id}/delays").json()
    near = sorted(t.delay_s for t in tasks if t.device == "near")
    assert delays["near"]["delays_s"] == near
    assert delays["near"]["max_s"] == near[-1]
    pairs = client.get(f"/api/runs/{run_id}/predictions").json()
    assert [(p["predicted_s"], p["measured_s"]) for p in pairs] == [
        (p.delay_s, t.delay_s) for p, t in zip(predictions, tasks)
    ]
    scheme = client.get(f"/api/runs/{run_id}/cuts").json()
    assert {d["device"]: d["cut"] for d in scheme["devices"]} == cuts
    assert len(scheme["stages"]) == 11
    far = next(d for d in scheme["devices"] if d["device"] == "far")
    assert far["link"]["rate_mbps"] == round(wifi_link(100).rate_mbps, 3)

    for figure in ("breakdown", "schedule", "cdf", "prediction", "cuts", "profile"):
        png = client.get(f"/api/runs/{run_id}/figures/{figure}.png")
        assert png.status_code == 200
        assert png.content.startswith(b"\x89PNG") and len(png.content) > 5000
    unknown = client.get(f"/api/runs/{run_id}/figures/pie.png")
    assert unknown.status_code == 404 and detail(unknown)["value"] == "pie"
    for path in ("", "/summary", "/tasks", "/schedule", "/cuts", "/figures/cdf.png"):
        missing = client.get(f"/api/runs/999{path}")
        assert missing.status_code == 404 and detail(missing)["field"] == "run_id"


@pytest.mark.slow
def test_a_run_stops_and_runs_compare(
    client: TestClient, finished_run: dict[str, Any], workspace: Path
) -> None:
    data = scenario_data("long", tasks=400, period_ms=100)
    client.put("/api/scenarios/long", json={"data": data})
    job = client.post("/api/runs", json={"scenario": "long"}).json()
    busy = client.post("/api/runs", json={"scenario": "quick"})
    assert busy.status_code == 409 and detail(busy)["value"] == "quick"

    wait_for(
        client,
        job["job_id"],
        lambda j: j["progress"] is not None and j["progress"]["done"] >= 2,
        180,
    )
    stopped = client.post(f"/api/jobs/{job['job_id']}/stop").json()
    assert stopped["state"] in ("stopping", "failed")
    ended = wait_for(client, job["job_id"], lambda j: j["state"] != "stopping", 60)
    # The CLI ends a run it was told to stop like one interrupted by Ctrl-C.
    assert ended["state"] == "failed" and ended["returncode"] == 5, ended
    assert ended["progress"]["status"] == "incomplete"
    assert ended["progress"]["done"] < 800
    with ResultStore(workspace / "results.sqlite") as store:
        run = store.run(ended["run_id"])
        assert run.status == "incomplete" and run.reason == "interrupted"
        # The CLI tore its testbed down: no node of the run is still alive.
        pids = [node.pid for node in store.nodes(run.run_id) if node.pid]
    for pid in pids:
        assert _gone(pid), pid

    runs = f"runs={finished_run['run_id']}&runs={ended['run_id']}"
    compared = client.get(f"/api/compare?{runs}").json()
    assert [r["run_id"] for r in compared["runs"]] == [
        finished_run["run_id"],
        ended["run_id"],
    ]
    assert compared["runs"][1]["params"]["workload.tasks_per_device"] == 400
    assert len(compared["summaries"]) == 2
    for figure in ("comparison", "cut-rate"):
        png = client.get(f"/api/compare/figures/{figure}.png?{runs}")
        assert png.content.startswith(b"\x89PNG")
    one = client.get(f"/api/compare?runs={finished_run['run_id']}")
    assert one.status_code == 422 and detail(one)["field"] == "runs"
    bad = client.get("/api/compare?runs=1&runs=x")
    assert bad.status_code == 422 and detail(bad)["field"] == "runs.1"
    assert client.get("/api/compare?runs=1&runs=999").status_code == 404


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie awaiting its parent counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "zombie" in status.lower()


def test_unknown_jobs_and_scenarios_are_404(client: TestClient) -> None:
    for method, path in (
        ("GET", "/api/jobs/77"),
        ("POST", "/api/jobs/77/stop"),
        ("GET", "/api/jobs/77/log"),
    ):
        response = client.request(method, path)
        assert response.status_code == 404 and detail(response)["field"] == "job_id"
    response = client.post("/api/runs", json={"scenario": "nowhere"})
    assert response.status_code == 404 and detail(response)["value"] == "nowhere"


def test_an_invalid_file_is_not_started(client: TestClient, workspace: Path) -> None:
    (workspace / "scenarios" / "handmade.yaml").write_text("name: handmade\nseed: -1\n")
    listed = {e["name"]: e for e in client.get("/api/scenarios").json()}
    assert listed["handmade"]["valid"] is False
    response = client.post("/api/runs", json={"scenario": "handmade"})
    assert response.status_code == 422
    assert detail(response)["field"] == "seed"
    (workspace / "scenarios" / "handmade.yaml").unlink()
