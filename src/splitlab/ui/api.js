// The partitioning manager's HTTP API, as the page calls it.
//
// A server bound to a non-loopback address prints its address with
// "#token=..."; the page takes the token from there once, keeps it in
// sessionStorage (this tab only) and sends it as a bearer token.  Requests
// that change something carry "X-Splitlab: 1", which a page of another site
// cannot send without the browser asking the server first.

const TOKEN_KEY = "splitlab-token";

export function takeTokenFromAddress() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const all = { "X-Splitlab": "1", ...extra };
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

export class ApiError extends Error {
  constructor(status, detail) {
    const message = typeof detail === "object" && detail ? detail.message : String(detail);
    super(message || `HTTP ${status}`);
    this.status = status;
    this.field = detail && typeof detail === "object" ? detail.field : null;
    this.value = detail && typeof detail === "object" ? detail.value : null;
  }
}

async function request(method, path, body) {
  const options = { method, headers: headers() };
  if (body instanceof FormData) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 204) return null;
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data ? data.detail : text);
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const put = (path, body) => request("PUT", path, body);
export const del = (path) => request("DELETE", path);

// A PNG from the API as an object URL (an <img src> cannot send the token).
export async function imageUrl(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new ApiError(response.status, data ? data.detail : response.statusText);
  }
  return URL.createObjectURL(await response.blob());
}

// Follow a text/event-stream with fetch (EventSource cannot send the token).
// Calls onLine for every data line and onEnd with the exit code; returns a
// function that stops following.
export function follow(path, onLine, onEnd) {
  const controller = new AbortController();
  (async () => {
    const response = await fetch(path, { headers: headers(), signal: controller.signal });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let split;
      while ((split = buffer.indexOf("\n\n")) >= 0) {
        const message = buffer.slice(0, split);
        buffer = buffer.slice(split + 2);
        const lines = message.split("\n");
        const event = lines.find((l) => l.startsWith("event: "));
        const data = lines
          .filter((l) => l.startsWith("data: "))
          .map((l) => l.slice(6))
          .join("\n");
        if (event && event.slice(7) === "end") onEnd(Number(data));
        else onLine(data);
      }
    }
  })().catch((error) => {
    if (error.name !== "AbortError") onLine(`(log stream closed: ${error.message})`);
  });
  return () => controller.abort();
}
