// The splitlab GUI: four screens over the partitioning manager's API.
// Plain ES modules, no build step: the browser loads these files as they are.

import { get, takeTokenFromAddress } from "./api.js";
import { clear, h } from "./dom.js";
import { renderResults, refreshRuns } from "./results.js";
import { renderRun, resumeRun } from "./run.js";
import { load, refreshSaved, refreshScenario, renderScenario } from "./scenario.js";
import { deriveAll, newDraft, onChange, state } from "./state.js";
import { refreshTestbed, renderTestbed } from "./testbed.js";

const SCREENS = {
  testbed: { title: "Testbed", render: renderTestbed, light: refreshTestbed },
  scenario: { title: "Scenario", render: renderScenario, light: refreshScenario },
  run: { title: "Run", render: renderRun, light: null },
  results: { title: "Results", render: renderResults, light: null },
};

let screen = "testbed";
const main = document.getElementById("screen");
const nav = document.getElementById("tabs");
const status = document.getElementById("status");

function drawTabs() {
  clear(
    nav,
    Object.entries(SCREENS).map(([key, value]) =>
      h("button", { class: key === screen ? "tab active" : "tab", "data-screen": key, onclick: () => show(key) }, value.title),
    ),
  );
}

// A field being typed in keeps its element: only the parts without fields
// are redrawn then.
function typing() {
  const focused = document.activeElement;
  return focused && main.contains(focused) && focused.tagName === "INPUT" && ["text", "number"].includes(focused.type);
}

function render() {
  const current = SCREENS[screen];
  if (typing()) {
    if (current.light) current.light();
    return;
  }
  current.render(main);
}

async function show(key) {
  screen = key;
  window.location.hash = key;
  drawTabs();
  try {
    if (key === "scenario" || key === "run") await refreshSaved();
    if (key === "results") await refreshRuns();
  } catch (failure) {
    status.textContent = failure.message;
  }
  render();
}

async function boot() {
  takeTokenFromAddress();
  try {
    [state.registries, state.schema] = await Promise.all([get("/api/registries"), get("/api/schema")]);
    await refreshSaved();
    await resumeRun();
  } catch (failure) {
    clear(main, h("p", { class: "error" }, `Cannot reach the splitlab API: ${failure.message}`));
    return;
  }
  state.draft = newDraft();
  onChange(render);
  const wanted = window.location.hash.slice(1);
  const params = new URLSearchParams(window.location.search);
  if (params.get("scenario")) await load(params.get("scenario"));
  deriveAll();
  status.textContent = "";
  await show(wanted in SCREENS ? wanted : "testbed");
}

// Back and forward move between screens.
window.addEventListener("hashchange", () => {
  const wanted = window.location.hash.slice(1);
  if (wanted in SCREENS && wanted !== screen) show(wanted);
});

boot();
