"""The web GUI in a real browser against a real ``splitlab ui`` server.

Debian's Chromium, headless, driven by Playwright: a two-device scenario is
built by clicking, saved, run for real and its results read off the page and
checked against the results store.  Screenshots of every screen at 1280x800
go to ``tests/artifacts/``.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from splitlab.api import create_app
from splitlab.experiment import prepare_weights
from splitlab.placement import wifi_link
from splitlab.results import ResultStore
from splitlab.scenario import load_scenario, parse_scenario

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
SIZE = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``splitlab ui`` on a free loopback port over a fresh workspace."""
    workspace = tmp_path_factory.mktemp("gui-workspace")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "splitlab.cli",
            "ui",
            "--port",
            "0",
            "--workspace",
            str(workspace),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", first)
    assert match, first
    try:
        yield match.group(0), workspace
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, for the whole module."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(chromium: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A 1280x800 page that collects console errors and warnings."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    context = chromium.new_context(viewport=SIZE)
    opened = context.new_page()
    opened.on("console", on_console)
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        yield opened, problems
    finally:
        context.close()


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def images_loaded(page: Page, selector: str) -> None:
    page.wait_for_function(
        """selector => {
            const images = [...document.querySelectorAll(selector)];
            return images.length > 0
                && images.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=selector,
        timeout=60_000,
    )


def fill(page: Page, selector: str, value: str) -> None:
    page.fill(selector, value)
    page.locator(selector).blur()


LOCAL_ALGORITHM = """
def all_local(problem):
    return {device: problem.num_stages for device in problem.devices}
"""


def test_build_run_and_read_a_scenario_in_the_browser(
    server: tuple[str, Path], page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    url, workspace = server
    browser, problems = page

    # The weights the scenario will use are trained once per test session.
    prepare_weights(
        parse_scenario(
            {
                "name": "warm",
                "seed": 2,
                "model": "alexnet-small",
                "training": {"epochs": 1},
                "devices": [{"name": "d", "class": "rpi4", "position_m": [1, 0]}],
            },
            source="test",
        )
    )

    # Testbed: two devices, one dragged farther out; its link follows.
    browser.goto(url)
    browser.wait_for_selector("#plan")
    browser.click("#add-device")
    browser.click("#add-device")
    label = browser.locator("#plan text.link-label[data-device=pi2]")
    browser.wait_for_function(
        "() => document.querySelector('#plan text.link-label[data-device=pi2]')"
        ".textContent.includes('Mbit/s')"
    )
    before = label.text_content()
    node = browser.locator("#plan g.node[data-node=pi2]").bounding_box()
    assert node is not None
    x, y = node["x"] + node["width"] / 2, node["y"] + node["height"] / 2
    browser.mouse.move(x, y)
    browser.mouse.down()
    for step in range(1, 11):
        browser.mouse.move(x + 10 * step, y + 4 * step)
    browser.mouse.up()
    cell = browser.locator("#link-table tbody tr >> nth=1").locator("td >> nth=1")
    position = [float(v) for v in (cell.text_content() or "").split(",")]
    assert position[0] > 60
    expected = wifi_link(math.hypot(*position))
    browser.wait_for_function(
        "text => document.querySelector("
        "'#plan text.link-label[data-device=pi2]').textContent.startsWith(text)",
        arg=f"{expected.rate_mbps:.1f} Mbit/s · {expected.latency_ms:.2f} ms",
    )
    after = label.text_content()
    assert after is not None and before is not None
    rate_before = float(before.split(" Mbit/s")[0])
    rate_after = float(after.split(" Mbit/s")[0])
    assert rate_after < rate_before
    # pi1's link set by hand instead.
    browser.click("#plan g.node[data-node=pi1]")
    browser.check("#manual-link")
    fill(browser, "#link-rate", "3")
    fill(browser, "#link-latency", "8")
    browser.wait_for_function(
        "() => document.querySelector('#plan text.link-label[data-device=pi1]')"
        ".textContent == '3 Mbit/s · 8 ms (set by hand)'"
    )
    shoot(browser, "testbed")

    # Scenario: the small AlexNet, three tasks each, saved as a YAML file.
    browser.click("button[data-screen=scenario]")
    fill(browser, "#scenario-name", "gui-two")
    browser.select_option("#model", "alexnet-small")
    fill(browser, "input[type=number] >> nth=0", "2")  # the seed
    fill(browser, "#epochs", "1")
    fill(browser, "#warmup", "1")
    fill(browser, "#repeats", "3")
    fill(browser, "#tasks", "3")
    fill(browser, "#period", "50")
    # An algorithm of one's own, uploaded; it runs on the BS when planning.
    upload = tmp_path / "everything_local.py"
    upload.write_text(LOCAL_ALGORITHM)
    browser.set_input_files("#algorithm-file", str(upload))
    browser.wait_for_selector("#scenario-message.ok")
    stored = workspace / "algorithms" / "everything_local.py"
    assert stored.read_text() == LOCAL_ALGORITHM
    assert browser.input_value("#algorithm") == f"{stored}:all_local"
    browser.wait_for_function(
        "() => document.querySelector('#yaml-text')"
        ".textContent.includes('tasks_per_device: 3')"
    )
    browser.click("#save-scenario")
    browser.wait_for_selector("#scenario-message.ok")
    saved = workspace / "scenarios" / "gui-two.yaml"
    data = yaml.safe_load(saved.read_text())
    assert data["model"] == "alexnet-small" and data["seed"] == 2
    assert [d["name"] for d in data["devices"]] == ["pi1", "pi2"]
    assert "link" not in data["devices"][1]
    assert data["devices"][0]["link"] == {
        "latency_ms": 8,
        "rate_mbps": 3,
        "jitter_ms": 0,
    }
    assert data["algorithm"] == f"{stored}:all_local"
    scenario = load_scenario(saved)
    assert scenario.devices[1].position_m == tuple(position)
    assert scenario.devices[1].link.rate_mbps == pytest.approx(rate_after, abs=0.06)
    shoot(browser, "scenario")

    # Run: start it, watch progress, wait for the end.
    browser.click("button[data-screen=run]")
    browser.select_option("#run-scenario", "gui-two")
    browser.click("#start-run")
    browser.wait_for_selector(
        "#run-phase[data-phase=running], #run-state[data-state=finished]",
        timeout=120_000,
    )
    shoot(browser, "run-progress")
    browser.wait_for_selector("#run-state[data-state=finished]", timeout=180_000)
    browser.wait_for_function(
        "() => document.querySelector('#run-log').textContent.includes('results:')"
    )
    counts = browser.locator(".device-progress .count").all_text_contents()
    assert counts == ["3/3", "3/3"]
    shoot(browser, "run")

    # Results: the numbers on the page are the store's.
    browser.click("button[data-screen=results]")
    browser.click("#runs-table a")
    browser.wait_for_selector("#summary-table")
    images_loaded(browser, "#run-detail figure img")
    with ResultStore(workspace / "results.sqlite") as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        tasks = store.tasks(run_id)
        cuts = store.cuts(run_id)
        assert store.run(run_id).status == "completed"
    overall = browser.locator("#summary-table tr[data-group=all] td")
    assert overall.nth(2).text_content() == "6/6"
    mean_ms = sum(t.delay_s for t in tasks) / len(tasks) * 1e3
    assert overall.nth(3).text_content() == f"{mean_ms:.1f}"
    for device in ("pi1", "pi2"):
        row = browser.locator(f"#summary-table tr[data-group={device}] td")
        own = [t.delay_s for t in tasks if t.device == device]
        assert row.nth(1).text_content() == str(cuts[device]) == "11"
        assert row.nth(3).text_content() == f"{sum(own) / len(own) * 1e3:.1f}"
    shoot(browser, "results")

    # A second run with another algorithm, and the two side by side.
    browser.click("button[data-screen=scenario]")
    browser.select_option("#algorithm", "offload-all")
    browser.click("#save-scenario")
    browser.wait_for_selector("#scenario-message.ok")
    browser.click("button[data-screen=run]")
    browser.click("#start-run")
    browser.wait_for_selector("#run-state[data-state=running]")
    browser.wait_for_selector("#run-state[data-state=finished]", timeout=180_000)
    browser.click("button[data-screen=results]")
    boxes = browser.locator("#runs-table input[type=checkbox]")
    browser.wait_for_function(
        "() => document.querySelectorAll("
        "'#runs-table input[type=checkbox]').length == 2"
    )
    boxes.nth(0).click()
    boxes.nth(1).click()
    browser.click("#compare-runs:text('Compare selected (2)')")
    browser.wait_for_selector("#compare-table")
    images_loaded(browser, "#comparison figure img")
    algorithms = browser.locator("#compare-table tbody tr td:nth-child(2)")
    assert algorithms.all_text_contents() == [
        f"algorithm={stored}:all_local",
        "algorithm=offload-all",
    ]
    shoot(browser, "compare")

    assert problems == []


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[str]:
    """The manager with a token, on a loopback port, in this process."""
    app = create_app(tmp_path, token="page-token")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        listener.close()


def test_the_page_takes_the_token_from_its_address(
    token_server: str, chromium: Browser
) -> None:
    context = chromium.new_context(viewport=SIZE)
    stranger = chromium.new_context(viewport=SIZE)
    try:
        page = context.new_page()
        page.goto(f"{token_server}#token=page-token")
        page.wait_for_selector("#plan")
        stored = page.evaluate("sessionStorage.getItem('splitlab-token')")
        assert stored == "page-token"
        assert "page-token" not in page.url
        page.click("#add-device")
        page.wait_for_function(
            "() => document.querySelector('#plan text.link-label')"
            ".textContent.includes('Mbit/s')"
        )
        # Without the token the API refuses, and the page says so.
        other = stranger.new_page()
        other.goto(token_server)
        refusal = other.wait_for_selector("main .error")
        assert "Authorization: Bearer TOKEN" in (refusal.text_content() or "")
    finally:
        context.close()
        stranger.close()
