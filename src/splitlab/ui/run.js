// The Run screen: start a saved scenario as `splitlab run`, follow its
// progress per device and its output, stop it.

import { follow, get, post } from "./api.js";
import { clear, h, select } from "./dom.js";
import { savedScenarios } from "./scenario.js";
import { state } from "./state.js";

const LOG_LINES = 400;
let chosen = null;
let job = null; // the latest job's status from the API
let lines = [];
let stopFollowing = null;
let poll = null;
let error = null;
let root = null;

function draw() {
  if (!root || !document.body.contains(root)) return;
  renderRun(root);
}

async function refresh() {
  if (!job) return;
  try {
    job = await get(`/api/jobs/${job.job_id}`);
  } catch (failure) {
    error = failure.message;
  }
  if (job.state !== "running" && job.state !== "stopping") {
    clearInterval(poll);
    poll = null;
  }
  draw();
}

function followLog(jobId) {
  if (stopFollowing) stopFollowing();
  lines = [];
  stopFollowing = follow(
    `/api/jobs/${jobId}/log`,
    (line) => {
      lines.push(line);
      if (lines.length > LOG_LINES) lines = lines.slice(-LOG_LINES);
      const pane = document.getElementById("run-log");
      if (pane) {
        pane.textContent = lines.join("\n");
        pane.scrollTop = pane.scrollHeight;
      }
    },
    () => refresh(),
  );
}

async function start() {
  error = null;
  try {
    job = await post("/api/runs", { scenario: chosen });
    followLog(job.job_id);
    poll = setInterval(refresh, 500);
  } catch (failure) {
    error = failure.message;
  }
  draw();
}

async function stop() {
  try {
    job = await post(`/api/jobs/${job.job_id}/stop`);
  } catch (failure) {
    error = failure.message;
  }
  draw();
}

// Pick up a job already running when the page is opened.
export async function resumeRun() {
  const answer = await get("/api/runs");
  const active = answer.jobs.filter((j) => j.state === "running" || j.state === "stopping");
  if (active.length && !job) {
    job = active[active.length - 1];
    chosen = job.scenario;
    followLog(job.job_id);
    poll = setInterval(refresh, 500);
  }
}

function bar(done, expected) {
  const share = expected ? Math.min(1, done / expected) : 0;
  return h("div", { class: "bar" }, h("div", { class: "fill", style: `width: ${(share * 100).toFixed(1)}%` }));
}

export function renderRun(element) {
  root = element;
  const scenarios = savedScenarios().filter((s) => s.valid);
  if (!chosen || !scenarios.some((s) => s.name === chosen)) {
    chosen = scenarios.some((s) => s.name === state.draft.name) ? state.draft.name : scenarios[0]?.name ?? null;
  }
  const active = job && (job.state === "running" || job.state === "stopping");
  const progress = job?.progress;
  clear(
    element,
    h(
      "div",
      { class: "run-screen" },
      h(
        "section",
        {},
        h(
          "div",
          { class: "toolbar" },
          select(scenarios.map((s) => [s.name, `${s.name} (${s.devices} devices, ${s.model})`]), chosen, (v) => (chosen = v), { id: "run-scenario", disabled: active }),
          h("button", { id: "start-run", class: "primary", onclick: start, disabled: active || !chosen }, "Start run"),
          h("button", { id: "stop-run", class: "danger", onclick: stop, disabled: !active }, "Stop"),
        ),
        scenarios.length ? null : h("p", { class: "note" }, "Save a scenario first (Scenario screen)."),
        error ? h("p", { class: "error" }, error) : null,
        job
          ? h(
              "div",
              { class: "panel", id: "run-status" },
              h(
                "p",
                {},
                h("strong", {}, `Job ${job.job_id}: ${job.scenario}`),
                " · ",
                h("span", { id: "run-state", "data-state": job.state }, job.state),
                " · phase ",
                h("span", { id: "run-phase", "data-phase": job.phase }, job.phase),
                job.run_id ? ` · run ${job.run_id}` : "",
                job.returncode !== null ? ` · exit code ${job.returncode}` : "",
              ),
              progress
                ? h(
                    "div",
                    { class: "progress" },
                    h("p", { class: "muted" }, `profiled ${progress.profiled} of ${progress.nodes} nodes · ${progress.done} of ${progress.expected} tasks`),
                    progress.devices.map((d) =>
                      h("div", { class: "device-progress", "data-device": d.device }, h("span", { class: "name" }, d.device), bar(d.done, d.expected), h("span", { class: "count" }, `${d.done}/${d.expected}`)),
                    ),
                    progress.reason ? h("p", { class: "error" }, progress.reason) : null,
                  )
                : h("p", { class: "muted" }, "preparing: loading or training the model's weights, starting the nodes…"),
            )
          : h("p", { class: "muted" }, "No run started from this page yet."),
      ),
      h("section", {}, h("h3", {}, "Output"), h("pre", { id: "run-log", class: "log" }, lines.join("\n"))),
    ),
  );
  const pane = document.getElementById("run-log");
  if (pane) pane.scrollTop = pane.scrollHeight;
}
