// The Results screen: every run in the store; one run's tables and figures;
// several runs side by side.

import { get, imageUrl } from "./api.js";
import { clear, h, ms, table } from "./dom.js";

const FIGURES = [
  ["breakdown", "Delay breakdown"],
  ["schedule", "BS schedule (Gantt)"],
  ["cdf", "Delay distribution (CDF)"],
  ["prediction", "Predicted vs measured"],
  ["cuts", "Chosen cuts"],
];

let runs = [];
let current = null; // run id shown
let compared = new Set();
let detail = null;
let comparison = null;
let error = null;
let root = null;
const imageCache = new Map(); // figure path -> object URL, until the run list is refreshed

export async function refreshRuns() {
  runs = (await get("/api/runs")).runs;
  for (const url of imageCache.values()) URL.revokeObjectURL(url);
  imageCache.clear();
}

export async function showRun(runId) {
  current = runId;
  comparison = null;
  error = null;
  try {
    const [summary, cuts, tasks] = await Promise.all([
      get(`/api/runs/${runId}/summary`),
      get(`/api/runs/${runId}/cuts`),
      get(`/api/runs/${runId}/tasks`),
    ]);
    detail = { summary, cuts, tasks };
  } catch (failure) {
    error = failure.message;
  }
  draw();
}

async function compare() {
  const ids = [...compared].sort((a, b) => a - b);
  const query = ids.map((id) => `runs=${id}`).join("&");
  try {
    comparison = { ids, query, data: await get(`/api/compare?${query}`) };
    current = null;
    detail = null;
    error = null;
  } catch (failure) {
    error = failure.message;
  }
  draw();
}

// An uploaded algorithm is named by its absolute path; lists show its file.
function algorithmLabel(name) {
  return name.includes("/") && name.includes(":") ? name.slice(name.lastIndexOf("/") + 1) : name;
}

function draw() {
  if (root && document.body.contains(root)) renderResults(root);
}

function figure(path, caption, id) {
  const img = h("img", { alt: caption, id });
  const cached = imageCache.get(path);
  (cached ? Promise.resolve(cached) : imageUrl(path))
    .then((url) => {
      imageCache.set(path, url);
      img.src = url;
    })
    .catch((failure) => img.replaceWith(h("p", { class: "error" }, failure.message)));
  return h("figure", {}, img, h("figcaption", {}, caption));
}

// The full table for one run; a narrower one (compact) for runs side by side.
function summaryTable(summary, id, compact = false) {
  const full = [
    "device", "cut", "tasks", "mean ms", "p50 ms", "p95 ms", "device ms", "link ms", "BS wait ms", "BS ms", "predicted ms", "pred. error",
  ];
  const kept = compact ? [0, 1, 2, 3, 5, 6, 7, 8, 9] : full.map((_, index) => index);
  return table(
    kept.map((index) => full[index]),
    summary.rows.map((row) =>
      h(
        "tr",
        { class: row.group === summary.overall ? "overall" : "", "data-group": row.group },
        [
          row.group,
          row.cut ?? "",
          `${row.tasks}/${row.expected}`,
          ms(row.mean_s),
          ms(row.p50_s),
          ms(row.p95_s),
          ms(row.device_s),
          ms(row.transmission_s),
          ms(row.bs_wait_s),
          ms(row.bs_s),
          ms(row.predicted_mean_s),
          row.prediction_error === null ? "-" : `${(row.prediction_error * 100).toFixed(0)} %`,
        ]
          .map((cell, index) => h("td", { class: index > 1 ? "num" : "", "data-column": index }, cell))
          .filter((_, index) => kept.includes(index)),
      ),
    ),
    { id, class: "summary" },
  );
}

function runDetail() {
  const { summary, cuts, tasks } = detail;
  const run = summary.run;
  return h(
    "div",
    { id: "run-detail" },
    h(
      "h3",
      {},
      `Run ${run.run_id}: ${run.name} · ${algorithmLabel(run.algorithm)} / ${run.scheduler} · `,
      h("span", { class: `status ${run.status}` }, run.status),
      run.reason ? ` (${run.reason})` : "",
    ),
    h(
      "p",
      { class: "muted" },
      `${summary.matched} of ${summary.verified} tasks equal the unsplit model · accuracy ` +
        `${summary.accuracy === null ? "-" : (summary.accuracy * 100).toFixed(1) + " %"} · CPU limits by ` +
        `${summary.limit_mechanisms.join(", ") || "-"}` +
        (summary.deadline_misses === null ? "" : ` · ${summary.deadline_misses} deadline misses`) +
        (run.duration_s ? ` · ${run.duration_s.toFixed(1)} s` : ""),
    ),
    summaryTable(summary, "summary-table"),
    h("h4", {}, "Cuts"),
    table(
      ["device", "k", "after stage", "bytes sent", "latency ms", "rate Mbit/s", "CPU share"],
      cuts.devices.map((d) => [d.device, d.cut ?? "-", d.after_stage ?? "(input)", d.cut_bytes ?? "-", d.link?.latency_ms ?? "-", d.link?.rate_mbps ?? "-", d.cpu_share ?? "-"]),
      { id: "cuts-table" },
    ),
    h("div", { class: "figures" }, FIGURES.map(([name, caption]) => figure(`/api/runs/${run.run_id}/figures/${name}.png`, caption, `figure-${name}`))),
    h("details", {}, h("summary", {}, `Tasks (${tasks.length})`), table(
      ["task", "device", "cut", "arrival s", "device ms", "link ms", "BS wait ms", "BS ms", "delay ms", "predicted ms"],
      tasks.map((t) => [t.task_id, t.device, t.cut, t.arrival_s.toFixed(3), ms(t.device_wait_s + t.device_s), ms(t.transmission_s), ms(t.bs_wait_s), ms(t.bs_s), ms(t.delay_s), ms(t.predicted_delay_s)]),
      { id: "tasks-table" },
    )),
  );
}

function comparisonDetail() {
  const { ids, query, data } = comparison;
  return h(
    "div",
    { id: "comparison" },
    h("h3", {}, `Runs ${ids.join(", ")} side by side`),
    table(
      ["run", "differs in", "tasks", "mean ms", "p95 ms"],
      data.runs.map((r) => [r.run_id, Object.entries(r.params).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ") || "-", r.tasks, ms(r.mean_s), ms(r.p95_s)]),
      { id: "compare-table" },
    ),
    h(
      "div",
      { class: "side-by-side" },
      data.summaries.map((summary) =>
        h(
          "div",
          {},
          h("h4", {}, `Run ${summary.run.run_id}: ${summary.run.name} · ${algorithmLabel(summary.run.algorithm)} / ${summary.run.scheduler}`),
          summaryTable(summary, `summary-${summary.run.run_id}`, true),
          figure(`/api/runs/${summary.run.run_id}/figures/breakdown.png`, `Run ${summary.run.run_id}: delay breakdown`, `figure-breakdown-${summary.run.run_id}`),
        ),
      ),
    ),
    h("div", { class: "wide-figure" }, figure(`/api/compare/figures/comparison.png?${query}`, "Mean and p95 delay of the runs (95 % intervals over repeats)", "figure-comparison")),
  );
}

export function renderResults(element) {
  root = element;
  clear(
    element,
    h(
      "div",
      { class: "results" },
      h(
        "section",
        { class: "run-list" },
        h("div", { class: "toolbar" }, h("button", { id: "compare-runs", disabled: compared.size < 2, onclick: compare }, `Compare selected (${compared.size})`)),
        table(
          ["", "run", "scenario", "algorithm", "status"],
          [...runs].reverse().map((run) =>
            h(
              "tr",
              { class: run.run_id === current ? "selected" : "", "data-run": run.run_id },
              h("td", {}, h("input", { type: "checkbox", checked: compared.has(run.run_id), onchange: (e) => {
                if (e.target.checked) compared.add(run.run_id);
                else compared.delete(run.run_id);
                draw();
              } })),
              h("td", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); showRun(run.run_id); } }, `#${run.run_id}`)),
              h("td", {}, run.name),
              h("td", { class: "algorithm", title: run.algorithm }, algorithmLabel(run.algorithm)),
              h("td", {}, h("span", { class: `status ${run.status}` }, run.status)),
            ),
          ),
          { id: "runs-table" },
        ),
        runs.length ? null : h("p", { class: "muted" }, "No runs in this workspace yet."),
      ),
      h(
        "section",
        { class: "run-view" },
        error ? h("p", { class: "error" }, error) : null,
        comparison ? comparisonDetail() : detail ? runDetail() : h("p", { class: "muted" }, "Choose a run, or tick two or more and compare them."),
      ),
    ),
  );
}
