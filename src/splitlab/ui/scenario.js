// The Scenario screen: model, data, workload, algorithm (with upload),
// scheduler, objective and backend; save, load, duplicate and delete; the
// YAML file as it will be saved.

import { del, get, post, put } from "./api.js";
import { clear, field, h, numberInput, select, textInput } from "./dom.js";
import { changed, deriveAll, fromData, newDraft, state, toData } from "./state.js";

let saved = [];
let message = null; // {kind: "ok" | "error", text}
let preview = { yaml: "", error: null };
let previewTimer = null;

export async function refreshSaved() {
  saved = await get("/api/scenarios");
  state.uploaded = await get("/api/algorithms");
}

export function savedScenarios() {
  return saved;
}

function say(kind, text) {
  message = { kind, text };
  changed();
}

// While a field has the focus, only the YAML preview follows it.
export function refreshScenario() {
  schedulePreview();
}

function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    try {
      const answer = await post("/api/scenarios/validate", { data: toData() });
      preview = { yaml: answer.yaml, error: null };
    } catch (error) {
      preview = { yaml: preview.yaml, error: error.message };
    }
    const pane = document.getElementById("yaml-preview");
    if (pane) renderPreview(pane);
  }, 250);
}

function renderPreview(pane) {
  clear(
    pane,
    preview.error ? h("p", { class: "error", id: "validation-error" }, preview.error) : h("p", { class: "ok" }, "valid"),
    h("pre", { id: "yaml-text" }, preview.error ? "" : preview.yaml),
  );
}

async function save() {
  const data = toData();
  try {
    await put(`/api/scenarios/${encodeURIComponent(data.name)}`, { data });
    await refreshSaved();
    say("ok", `saved scenarios/${data.name}.yaml`);
  } catch (error) {
    say("error", error.message);
  }
}

export async function load(name) {
  try {
    const answer = await get(`/api/scenarios/${encodeURIComponent(name)}`);
    state.draft = fromData(answer.data);
    state.links = {};
    state.selected = "bs";
    deriveAll();
    say("ok", `loaded ${name}`);
  } catch (error) {
    say("error", error.message);
  }
}

async function duplicate() {
  const name = state.draft.name;
  const copy = `${name}-copy`;
  try {
    await post(`/api/scenarios/${encodeURIComponent(name)}/duplicate`, { name: copy });
    await refreshSaved();
    await load(copy);
  } catch (error) {
    say("error", error.message);
  }
}

async function remove() {
  const name = state.draft.name;
  try {
    await del(`/api/scenarios/${encodeURIComponent(name)}`);
    await refreshSaved();
    say("ok", `deleted scenarios/${name}.yaml`);
  } catch (error) {
    say("error", error.message);
  }
}

async function upload(input) {
  const file = input.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    const answer = await post("/api/algorithms", form);
    await refreshSaved();
    if (answer.references.length) state.draft.algorithm = answer.references[0];
    say("ok", `stored algorithms/${answer.file} (callables: ${answer.callables.join(", ") || "none"})`);
  } catch (error) {
    say("error", error.message);
  }
}

export function renderScenario(root) {
  const draft = state.draft;
  const registries = state.registries;
  const update = (apply) => (value) => {
    apply(value);
    changed();
  };
  const hasObjective = Boolean(state.schema?.properties?.objective);
  const algorithmOptions = [
    ...registries.algorithms.map((a) => [a, a]),
    ...state.uploaded.flatMap((entry) => entry.references.map((ref) => [ref, `${entry.file}: ${ref.split(":").pop()} (uploaded)`])),
  ];
  if (!algorithmOptions.some(([value]) => value === draft.algorithm)) algorithmOptions.push([draft.algorithm, draft.algorithm]);
  const modelOptions = registries.models.map((m) => [m.name, `${m.name}: ${m.description}`]);
  if (!modelOptions.some(([value]) => value === draft.model)) modelOptions.push([draft.model, draft.model]);

  schedulePreview();
  const pane = h("div", { id: "yaml-preview" });
  renderPreview(pane);
  clear(
    root,
    h(
      "div",
      { class: "split" },
      h(
        "section",
        { class: "form-grid" },
        h(
          "div",
          { class: "toolbar" },
          h("button", { id: "save-scenario", class: "primary", onclick: save }, "Save"),
          select(
            [["", "Load a saved scenario…"], ...saved.map((s) => [s.name, `${s.name}${s.valid ? "" : " (invalid)"}`])],
            "",
            (name) => name && load(name),
            { id: "load-scenario" },
          ),
          h("button", { onclick: duplicate, id: "duplicate-scenario" }, "Duplicate"),
          h("button", { onclick: remove, class: "danger" }, "Delete"),
          h("button", { onclick: () => {
            state.draft = newDraft();
            state.links = {};
            state.selected = "bs";
            changed();
          } }, "New"),
        ),
        message ? h("p", { class: message.kind, id: "scenario-message" }, message.text) : null,
        h(
          "fieldset",
          {},
          h("legend", {}, "Scenario"),
          h(
            "div",
            { class: "row" },
            field("name (also the file name)", textInput(draft.name, update((v) => (draft.name = v)), { id: "scenario-name" })),
            field("seed", numberInput(draft.seed, update((v) => (draft.seed = v)), { min: 0, step: 1 })),
            field("backend", select(registries.backends, draft.backend, update((v) => (draft.backend = v)), { id: "backend" })),
          ),
        ),
        h(
          "fieldset",
          {},
          h("legend", {}, "Model and data"),
          field("model", select(modelOptions, draft.model, update((v) => (draft.model = v)), { id: "model" })),
          h(
            "div",
            { class: "row" },
            field("dataset", select(registries.datasets, draft.data.dataset, update((v) => (draft.data.dataset = v)))),
            draft.data.dataset === "cifar10"
              ? field("CIFAR-10 folder", textInput(draft.data.dir, update((v) => (draft.data.dir = v))))
              : null,
          ),
          h(
            "div",
            { class: "row" },
            field("profiling warm-up runs", numberInput(draft.profiling.warmup, update((v) => (draft.profiling.warmup = v)), { min: 0, step: 1, id: "warmup" })),
            field("profiling repeats", numberInput(draft.profiling.repeats, update((v) => (draft.profiling.repeats = v)), { min: 1, step: 1, id: "repeats" })),
            field("training epochs", numberInput(draft.training.epochs, update((v) => (draft.training.epochs = v)), { min: 1, step: 1, id: "epochs" }), "when no weights are cached"),
          ),
        ),
        h(
          "fieldset",
          {},
          h("legend", {}, "Workload"),
          h(
            "div",
            { class: "row" },
            field("tasks per device", numberInput(draft.workload.tasks_per_device, update((v) => (draft.workload.tasks_per_device = v)), { min: 1, step: 1, id: "tasks" })),
            field("period (ms)", numberInput(draft.workload.period_ms, update((v) => (draft.workload.period_ms = v)), { min: 1, id: "period" })),
            field("arrivals", select(registries.arrivals, draft.workload.arrivals, update((v) => (draft.workload.arrivals = v)))),
            field("deadline (ms)", numberInput(draft.workload.deadline_ms, update((v) => (draft.workload.deadline_ms = v)), { min: 1 }), "optional"),
          ),
        ),
        h(
          "fieldset",
          {},
          h("legend", {}, "Partitioning and scheduling"),
          field("algorithm", select(algorithmOptions, draft.algorithm, update((v) => (draft.algorithm = v)), { id: "algorithm" })),
          h(
            "div",
            { class: "upload" },
            h("label", { class: "field" }, h("span", {}, "upload an algorithm (.py)"), h("input", { type: "file", accept: ".py", id: "algorithm-file", onchange: (e) => upload(e.target) })),
            h("p", { class: "warning" }, "An uploaded file is stored in the workspace and runs as Python code on the base station, with the rights of the user running splitlab, whenever a scenario names it. Upload only code you trust."),
          ),
          h(
            "div",
            { class: "row" },
            field("BS scheduler", select(registries.schedulers, draft.scheduler, update((v) => (draft.scheduler = v)), { id: "scheduler" })),
            field(
              "objective",
              select(registries.objectives, draft.objective, update((v) => (draft.objective = v)), { id: "objective", disabled: !hasObjective }),
              hasObjective ? null : "not in this splitlab's scenarios yet: not saved",
            ),
          ),
        ),
      ),
      h("aside", { class: "form-column" }, h("h3", {}, "The YAML file"), h("p", { class: "muted" }, `scenarios/${draft.name}.yaml — splitlab run reads exactly this`), pane),
    ),
  );
}
