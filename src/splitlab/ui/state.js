// The scenario being edited, shared by the Testbed and Scenario screens, and
// its translation to and from the YAML file's data.

import { post } from "./api.js";

export const state = {
  registries: null,
  schema: null,
  draft: null,
  links: {}, // device name -> the placement API's answer for its position
  selected: "bs",
  listeners: new Set(),
  uploaded: [],
};

export function onChange(listener) {
  state.listeners.add(listener);
}

export function changed() {
  for (const listener of state.listeners) listener();
}

function nextName(prefix, taken) {
  for (let i = 1; ; i += 1) if (!taken.includes(`${prefix}${i}`)) return `${prefix}${i}`;
}

export function newDraft() {
  return {
    name: "my-testbed",
    seed: 1,
    backend: "local",
    model: "cnn-small",
    data: { dataset: "mnist" },
    workload: { tasks_per_device: 5, period_ms: 250, arrivals: "periodic", deadline_ms: null },
    profiling: { warmup: 2, repeats: 5 },
    training: { epochs: 2 },
    algorithm: "greedy",
    scheduler: "fcfs",
    objective: "total",
    base_station: { name: "bs", workers: 1, position_m: [0, 0] },
    devices: [],
  };
}

export function addDevice() {
  const draft = state.draft;
  const names = draft.devices.map((d) => d.name);
  const index = draft.devices.length;
  // New devices go round the BS, 50 m out and farther each lap.
  const angle = ((index % 6) * 2 * Math.PI) / 6 - Math.PI / 6;
  const distance = 50 + 25 * Math.floor(index / 6);
  const [bx, by] = draft.base_station.position_m;
  const device = {
    name: nextName("pi", names),
    class: "rpi4",
    cpu_share: null,
    memory_mb: null,
    priority: 0,
    load: { cpu_percent: 0, memory_mb: 0 },
    position_m: [round(bx + distance * Math.cos(angle), 0), round(by + distance * Math.sin(angle), 0)],
    placed: true,
    manual: false,
    link: { latency_ms: 5, rate_mbps: 20, jitter_ms: 0 },
  };
  draft.devices.push(device);
  state.selected = draft.devices.length - 1;
  return device;
}

export function round(value, digits = 1) {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

// What the schema of this splitlab accepts: fields another version lacks
// (a device's background load, the objective) stay in the GUI but are not sent.
function accepts(definition, key) {
  const schema = state.schema;
  if (!schema) return true;
  const properties = definition ? schema.$defs?.[definition]?.properties : schema.properties;
  return Boolean(properties && key in properties);
}

function compact(object) {
  const out = {};
  for (const [key, value] of Object.entries(object)) if (value !== null && value !== undefined && value !== "") out[key] = value;
  return out;
}

// The draft as the scenario file's data.
export function toData(draft = state.draft) {
  const data = {
    name: draft.name,
    seed: draft.seed,
    backend: draft.backend,
    model: draft.model,
    data: compact(draft.data),
    workload: compact(draft.workload),
    profiling: compact(draft.profiling),
  };
  if (draft.training) data.training = compact(draft.training);
  if (draft.replan) data.replan = draft.replan;
  data.algorithm = draft.algorithm;
  data.scheduler = draft.scheduler;
  if (accepts(null, "objective") && draft.objective) data.objective = draft.objective;
  data.base_station = compact({ ...draft.base_station });
  data.devices = draft.devices.map((device) => {
    const out = { name: device.name };
    if (device.class) out.class = device.class;
    if (device.cpu_share !== null && device.cpu_share !== undefined) out.cpu_share = device.cpu_share;
    if (device.memory_mb !== null && device.memory_mb !== undefined) out.memory_mb = device.memory_mb;
    if (device.priority) out.priority = device.priority;
    if (device.placed) out.position_m = [...device.position_m];
    if (accepts("DeviceConfig", "load") && device.load && (device.load.cpu_percent || device.load.memory_mb)) {
      out.load = compact(device.load);
    }
    if (device.manual || !device.placed) out.link = compact(device.link);
    return out;
  });
  return data;
}

// A saved file's data as a draft.
export function fromData(data) {
  const draft = { ...newDraft(), ...data };
  draft.data = { ...newDraft().data, ...(data.data || {}) };
  draft.workload = { ...newDraft().workload, ...(data.workload || {}) };
  draft.profiling = { ...newDraft().profiling, ...(data.profiling || {}) };
  draft.training = { ...newDraft().training, ...(data.training || {}) };
  draft.base_station = { ...newDraft().base_station, ...(data.base_station || {}) };
  if (!draft.base_station.position_m) draft.base_station.position_m = [0, 0];
  if (!("objective" in data)) draft.objective = "total";
  draft.devices = (data.devices || []).map((device, index) => {
    const placed = Array.isArray(device.position_m);
    const angle = (index * 2 * Math.PI) / Math.max(6, (data.devices || []).length);
    return {
      name: device.name,
      class: device.class ?? null,
      cpu_share: device.cpu_share ?? null,
      memory_mb: device.memory_mb ?? null,
      priority: device.priority ?? 0,
      load: { cpu_percent: 0, memory_mb: 0, ...(device.load || {}) },
      position_m: placed ? [...device.position_m] : [round(40 * Math.cos(angle)), round(40 * Math.sin(angle))],
      placed,
      manual: "link" in device,
      link: { latency_ms: 5, rate_mbps: 20, jitter_ms: 0, ...(device.link || {}) },
    };
  });
  return draft;
}

// Ask the API for the link each placed device's position implies.  Only one
// request per device is in flight; a newer position is sent when it returns.
const inFlight = new Map();
export function deriveLink(device) {
  const key = device.name;
  if (inFlight.has(key)) {
    inFlight.set(key, true);
    return;
  }
  inFlight.set(key, false);
  post("/api/placement", { device: device.position_m, base_station: state.draft.base_station.position_m })
    .then((answer) => {
      state.links[key] = answer;
      changed();
    })
    .catch(() => {})
    .finally(() => {
      const again = inFlight.get(key);
      inFlight.delete(key);
      if (again) deriveLink(device);
    });
}

export function deriveAll() {
  for (const device of state.draft.devices) deriveLink(device);
}
