// The Testbed screen: nodes on a floor plan in metres, their properties, and
// each link as the WiFi model derives it from the distance, live while a
// node is dragged.  A device's link can be set by hand instead.

import { clear, field, h, numberInput, select, textInput } from "./dom.js";
import { addDevice, changed, deriveAll, deriveLink, round, state } from "./state.js";

// The plan shows x from -150 to 150 m and y from -100 to 100 m.
const VIEW = { x: -150, y: -100, width: 300, height: 200 };
const GRID_M = 25;

let dragging = null;

function linkText(device) {
  if (device.manual || !device.placed) {
    const l = device.link;
    return { text: `${l.rate_mbps} Mbit/s · ${l.latency_ms} ms (set by hand)`, bad: false };
  }
  const derived = state.links[device.name];
  if (!derived) return { text: "…", bad: false };
  if (!derived.reachable) return { text: `out of range (${derived.distance_m.toFixed(0)} m)`, bad: true };
  return {
    text:
      `${derived.rate_mbps.toFixed(1)} Mbit/s · ${derived.latency_ms.toFixed(2)} ms · ` +
      `loss ${formatLoss(derived.loss_percent)}`,
    bad: false,
  };
}

export function formatLoss(percent) {
  if (percent === null || percent === undefined) return "-";
  return percent < 0.001 ? "<0.001 %" : `${percent.toPrecision(2)} %`;
}

function pointer(svg, event) {
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  const local = point.matrixTransform(svg.getScreenCTM().inverse());
  return [round(local.x), round(local.y)];
}

function canvas() {
  const draft = state.draft;
  const svg = h("svg", {
    id: "plan",
    viewBox: `${VIEW.x} ${VIEW.y} ${VIEW.width} ${VIEW.height}`,
    "aria-label": "floor plan",
  });
  const grid = h("g", { class: "grid" });
  for (let x = VIEW.x; x <= VIEW.x + VIEW.width; x += GRID_M) {
    grid.append(h("line", { x1: x, y1: VIEW.y, x2: x, y2: VIEW.y + VIEW.height }));
    if (x > VIEW.x) grid.append(h("text", { x: x + 1, y: VIEW.y + VIEW.height - 2 }, `${x} m`));
  }
  for (let y = VIEW.y; y <= VIEW.y + VIEW.height; y += GRID_M) {
    grid.append(h("line", { x1: VIEW.x, y1: y, x2: VIEW.x + VIEW.width, y2: y }));
    if (y > VIEW.y) grid.append(h("text", { x: VIEW.x + 1, y: y - 1 }, `${y} m`));
  }
  svg.append(grid);
  const [bx, by] = draft.base_station.position_m;
  const range = state.registries ? state.registries.wifi_range_m : 0;
  svg.append(h("circle", { class: "range", cx: bx, cy: by, r: range }, h("title", {}, `WiFi range ${range.toFixed(0)} m`)));

  const links = h("g", {});
  const nodes = h("g", {});
  draft.devices.forEach((device, index) => {
    const [x, y] = device.position_m;
    const { text, bad } = linkText(device);
    const manual = device.manual || !device.placed;
    links.append(
      h("line", { class: `link${manual ? " manual" : ""}${bad ? " bad" : ""}`, x1: bx, y1: by, x2: x, y2: y }),
      h("text", { class: `link-label${bad ? " bad" : ""}`, x: (bx + x) / 2, y: (by + y) / 2 - 2, "data-device": device.name }, text),
    );
    const selected = state.selected === index;
    nodes.append(
      h(
        "g",
        {
          class: `node device${selected ? " selected" : ""}${device.placed ? "" : " unplaced"}`,
          transform: `translate(${x} ${y})`,
          "data-node": device.name,
          onpointerdown: (event) => startDrag(event, svg, index),
        },
        h("circle", { r: 5 }),
        h("text", { y: -7.5 }, device.name),
      ),
    );
  });
  const bsSelected = state.selected === "bs";
  nodes.append(
    h(
      "g",
      {
        class: `node bs${bsSelected ? " selected" : ""}`,
        transform: `translate(${bx} ${by})`,
        "data-node": draft.base_station.name,
        onpointerdown: (event) => startDrag(event, svg, "bs"),
      },
      h("rect", { x: -6, y: -6, width: 12, height: 12 }),
      h("text", { y: -8.5 }, `${draft.base_station.name} (BS)`),
    ),
  );
  svg.append(links, nodes);
  svg.addEventListener("pointermove", (event) => moveDrag(event, svg));
  svg.addEventListener("pointerup", () => (dragging = null));
  svg.addEventListener("pointerleave", () => (dragging = null));
  return svg;
}

function startDrag(event, svg, target) {
  event.preventDefault();
  dragging = target;
  state.selected = target;
  changed();
}

function moveDrag(event, svg) {
  if (dragging === null) return;
  const position = pointer(svg, event);
  if (dragging === "bs") {
    state.draft.base_station.position_m = position;
    deriveAll();
  } else {
    const device = state.draft.devices[dragging];
    device.position_m = position;
    device.placed = true;
    deriveLink(device);
  }
  changed();
}

function deviceForm(device, index) {
  const registries = state.registries;
  const classes = [["", "(custom)"], ...Object.keys(registries.device_classes).map((c) => [c, c])];
  const update = (apply) => (value) => {
    apply(value);
    changed();
  };
  const derived = state.links[device.name];
  const acceptsLoad = Boolean(state.schema?.$defs?.DeviceConfig?.properties?.load);
  return h(
    "div",
    { class: "panel", id: "node-form" },
    h("h3", {}, `Device ${device.name}`),
    field("name", textInput(device.name, update((v) => {
      delete state.links[device.name];
      device.name = v;
      deriveLink(device);
    }), { id: "device-name", pattern: "[A-Za-z0-9_-]{1,32}" })),
    field("device class", select(classes, device.class ?? "", update((v) => (device.class = v || null)), { id: "device-class" })),
    h(
      "div",
      { class: "row" },
      field("CPU share (cores)", numberInput(device.cpu_share, update((v) => (device.cpu_share = v)), { step: 0.05, min: 0, id: "device-cpu" }), "overrides the class"),
      field("memory (MiB)", numberInput(device.memory_mb, update((v) => (device.memory_mb = v)), { step: 256, min: 0, id: "device-memory" })),
    ),
    h(
      "div",
      { class: "row" },
      field("background CPU load (%)", numberInput(device.load.cpu_percent, update((v) => (device.load.cpu_percent = v)), { min: 0, max: 100 })),
      field("background memory (MiB)", numberInput(device.load.memory_mb, update((v) => (device.load.memory_mb = v)), { min: 0 })),
    ),
    acceptsLoad ? null : h("p", { class: "note" }, "This splitlab's scenarios have no background load yet: the load fields are kept here but not saved."),
    field("priority (lower runs first)", numberInput(device.priority, update((v) => (device.priority = v ?? 0)), { step: 1 })),
    h(
      "div",
      { class: "row" },
      field("x (m)", numberInput(device.position_m[0], update((v) => {
        device.position_m = [v ?? 0, device.position_m[1]];
        device.placed = true;
        deriveLink(device);
      }), { step: 1 })),
      field("y (m)", numberInput(device.position_m[1], update((v) => {
        device.position_m = [device.position_m[0], v ?? 0];
        device.placed = true;
        deriveLink(device);
      }), { step: 1 })),
    ),
    derived && device.placed
      ? h(
          "p",
          { class: "radio" },
          derived.reachable
            ? `${derived.distance_m.toFixed(1)} m · SNR ${derived.snr_db.toFixed(1)} dB · MCS ${derived.mcs} ` +
                `(${derived.phy_rate_mbps} Mbit/s PHY) · frame error ${(derived.frame_error * 100).toPrecision(2)} % · ` +
                `loss after retries ${formatLoss(derived.loss_percent)}`
            : `${derived.distance_m.toFixed(1)} m: beyond the ${derived.range_m.toFixed(0)} m WiFi range; move it closer or set its link by hand`,
        )
      : null,
    h(
      "label",
      { class: "check" },
      h("input", { type: "checkbox", id: "manual-link", checked: device.manual || !device.placed, onchange: update((e) => (device.manual = e.target.checked)) }),
      "set this link by hand",
    ),
    device.manual || !device.placed
      ? h(
          "div",
          { class: "row" },
          field("latency (ms)", numberInput(device.link.latency_ms, update((v) => (device.link.latency_ms = v)), { min: 0, step: 0.5, id: "link-latency" })),
          field("rate (Mbit/s)", numberInput(device.link.rate_mbps, update((v) => (device.link.rate_mbps = v)), { min: 0.001, step: 1, id: "link-rate" })),
          field("jitter (ms)", numberInput(device.link.jitter_ms, update((v) => (device.link.jitter_ms = v)), { min: 0, step: 0.1 })),
        )
      : null,
    h(
      "button",
      {
        class: "danger",
        onclick: () => {
          state.draft.devices.splice(index, 1);
          state.selected = "bs";
          changed();
        },
      },
      `Remove ${device.name}`,
    ),
  );
}

function stationForm() {
  const bs = state.draft.base_station;
  const update = (apply) => (value) => {
    apply(value);
    changed();
  };
  return h(
    "div",
    { class: "panel", id: "node-form" },
    h("h3", {}, "Base station"),
    field("name", textInput(bs.name, update((v) => (bs.name = v)))),
    h(
      "div",
      { class: "row" },
      field("workers", numberInput(bs.workers, update((v) => (bs.workers = v)), { min: 1, max: 64, step: 1 })),
      field("threads per worker", numberInput(bs.threads ?? 1, update((v) => (bs.threads = v)), { min: 1, max: 64, step: 1 })),
    ),
    h(
      "div",
      { class: "row" },
      field("x (m)", numberInput(bs.position_m[0], update((v) => {
        bs.position_m = [v ?? 0, bs.position_m[1]];
        deriveAll();
      }))),
      field("y (m)", numberInput(bs.position_m[1], update((v) => {
        bs.position_m = [bs.position_m[0], v ?? 0];
        deriveAll();
      }))),
    ),
    h("p", { class: "note" }, "Drag the nodes on the plan. A placed device's link is the 802.11n link of its distance to the BS (docs/placement.md); tick \u201cset this link by hand\u201d on a device to override it."),
  );
}

function linkTable() {
  const draft = state.draft;
  return h(
    "table",
    { class: "links", id: "link-table" },
    h("thead", {}, h("tr", {}, ["device", "position (m)", "link", "source"].map((x) => h("th", {}, x)))),
    h(
      "tbody",
      {},
      draft.devices.map((device, index) =>
        h(
          "tr",
          { class: state.selected === index ? "selected" : "", onclick: () => { state.selected = index; changed(); } },
          h("td", {}, device.name),
          h("td", {}, device.placed ? `${device.position_m[0]}, ${device.position_m[1]}` : "not placed"),
          h("td", {}, linkText(device).text),
          h("td", {}, device.manual || !device.placed ? "by hand" : "WiFi model"),
        ),
      ),
    ),
  );
}

// While a field has the focus, only the plan and the table are redrawn.
export function refreshTestbed() {
  document.getElementById("plan")?.replaceWith(canvas());
  document.getElementById("link-table")?.replaceWith(linkTable());
}

export function renderTestbed(root) {
  const draft = state.draft;
  const selected = state.selected === "bs" ? null : draft.devices[state.selected];
  clear(
    root,
    h(
      "div",
      { class: "split" },
      h(
        "section",
        { class: "plan-column" },
        h(
          "div",
          { class: "toolbar" },
          h("button", { id: "add-device", onclick: () => {
            const device = addDevice();
            deriveLink(device);
            changed();
          } }, "+ Add device"),
          h("span", { class: "muted" }, `${draft.devices.length} device(s) · scenario ${draft.name}`),
        ),
        canvas(),
        linkTable(),
      ),
      h("aside", { class: "form-column" }, selected ? deviceForm(selected, state.selected) : stationForm()),
    ),
  );
}
