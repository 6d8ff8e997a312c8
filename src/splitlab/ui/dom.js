// Small helpers to build the page without a framework.

// h("div", {class: "x", onclick: f}, child, ...): an element; strings become
// text nodes, null and false children are skipped.
export function h(tag, attributes = {}, ...children) {
  const svg = ["svg", "g", "circle", "rect", "line", "text", "title"].includes(tag);
  const element = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "value" && !svg) element.value = value;
    else if (key === "checked" && !svg) element.checked = Boolean(value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function clear(element, ...children) {
  element.replaceChildren(...children.flat().filter((c) => c !== null && c !== false));
  return element;
}

// A labelled form field.
export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}

export function select(options, value, onchange, attributes = {}) {
  return h(
    "select",
    { onchange: (e) => onchange(e.target.value), ...attributes },
    options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, text);
    }),
  );
}

export function numberInput(value, onchange, attributes = {}) {
  return h("input", {
    type: "number",
    value: value ?? "",
    oninput: (e) => onchange(e.target.value === "" ? null : Number(e.target.value)),
    ...attributes,
  });
}

export function textInput(value, onchange, attributes = {}) {
  return h("input", { type: "text", value: value ?? "", oninput: (e) => onchange(e.target.value), ...attributes });
}

// Milliseconds from seconds, as the tables show them.
export function ms(seconds, digits = 1) {
  return seconds === null || seconds === undefined ? "-" : (seconds * 1e3).toFixed(digits);
}

export function table(headers, rows, attributes = {}) {
  return h(
    "table",
    attributes,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((row) => (row instanceof Node ? row : h("tr", {}, row.map((c) => h("td", {}, c)))))),
  );
}
