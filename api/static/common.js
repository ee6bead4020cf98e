// What every part of the dashboard shares: the signed-in state, the API client, DOM and format
// helpers, and the failure codes in words. The token lives in sessionStorage (this tab only) and
// travels only in the Authorization header, never in a URL.

export const TOKEN_KEY = "machine-hub.token";
export const TMUX_SOCKET = "machine-hub"; // the agent's default MACHINE_HUB_TMUX_SOCKET

export const $ = (id) => document.getElementById(id);

export const state = {
  token: null,
  machines: [],
  loaded: false, // the first machine list came
  generation: 0, // bumps on sign-out so late answers of an old sign-in are dropped
  events: null, // {abort, open} of the running event stream reader
  timers: new Map(),
  features: { placement: false },
};

// Parts register what they do on sign-out and on a refused token here (no import cycles).
export const hooks = { signOut: (message) => {} };

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, { method = "GET", body, headers = {}, auth = true } = {}) {
  const gen = state.generation;
  const init = { method, cache: "no-store", headers: { Accept: "application/json", ...headers } };
  if (auth) init.headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "Cannot reach the hub (network error).");
  }
  let answer = null;
  try { answer = await response.json(); } catch (err) { answer = null; }
  if (gen !== state.generation) throw new ApiError(-1, "stale");
  if (!response.ok) {
    const msg = answer && answer.error ? answer.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, msg, answer);
  }
  if (answer === null) throw new ApiError(response.status, `${path} did not answer JSON`);
  return answer;
}

export const machinePath = (id, rest = "") => `/api/machines/${encodeURIComponent(id)}${rest}`;

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function banner(message, kind = "warn") {
  const node = $("banner");
  if (!message) { node.hidden = true; node.textContent = ""; return; }
  node.textContent = message;
  node.dataset.kind = kind;
  node.hidden = false;
}

// The words for an error answer, for a message next to the action that failed.
export function describe(err) {
  if (!(err instanceof ApiError)) return String(err);
  if (err.status === 0) return "Cannot reach the hub (network error). Check the connection and try again.";
  const body = err.body || {};
  const parts = [err.message];
  if (body.code) parts.push(`${codeWords(body.code)}`);
  if (body.detail) parts.push(body.detail);
  if (err.status === 429 || (err.status === 503 && err.message !== "Hub not connected")) parts.push("Wait a moment and try again.");
  if (err.status === 503 && err.message === "Hub not connected") parts.push("The hub cannot reach Redis; it recovers by itself.");
  return parts.join(" — ");
}

// For list loads: a refused token signs out, a lost hub shows the banner, others a banner line.
export function handleError(err, what) {
  if (!(err instanceof ApiError)) { console.error(err); banner(`${what}: ${err}`, "error"); return; }
  if (err.status === -1) return;
  if (err.status === 401) { hooks.signOut(`The hub refused this token (${err.message}). Paste a valid token.`); return; }
  if (err.status === 0) { banner("Cannot reach the hub. Live updates resume by themselves when it is back.", "error"); return; }
  if (err.status === 503 && err.message === "Hub not connected") { banner("The hub cannot reach Redis (Hub not connected).", "error"); return; }
  if (err.status === 404 && (err.body === null || err.message === "Not Found")) {
    banner(`${what}: this hub does not serve that route (HTTP 404). Is it an older machine-hub?`, "error");
    return;
  }
  banner(`${what}: ${describe(err)}`, "error");
}

// Each failure code (docs/api.md, Failure codes) in words, with what to do about it.
const CODES = {
  machine_offline: "The machine is offline: its agent is not running or cannot reach Redis. Start the agent, or pick another machine.",
  machine_draining: "The machine is drained and takes no new sessions. Undrain it in Machines, or pick another machine.",
  machine_full: "The machine already runs as many sessions as it may (--max-sessions). Stop one of its sessions, or pick another machine.",
  no_machine: "No online machine fits this spawn (agent, labels, room, folder): each machine's reason is listed. Pick a machine yourself, or free, undrain or start one.",
  expired: "The spawn waited for its machine, which did not come online in time. Start the machine's agent, then start the session again.",
  not_started: "The machine did not take the job in time, so it will never run. Check that its agent is healthy, then try again.",
  outcome_unknown: "The machine took the job but did not answer in time: the session may be running. Open the job to see its outcome; do not start it again blindly.",
  timeout: "The machine did not answer in time. Try again in a moment.",
  directory_not_found: "The folder does not exist on the machine. A worktree session needs an existing git repository: pick one.",
  not_a_directory: "That path is a file, not a folder. Pick a folder.",
  directory_create_failed: "The folder could not be created on the machine (permissions?). Pick another place.",
  directory_outside_roots: "The folder is outside the roots this machine's agent may use (--root). Pick a folder inside them.",
  directory_unreadable: "The folder cannot be read on the machine (permissions or a link loop).",
  not_a_git_repo: "The folder is not inside a git repository, so no worktree can be made. Pick a repository, or start a simple session.",
  worktree_failed: "git could not add the worktree (the error says why). Try another name, or reuse the existing worktree.",
  agent_not_installed: "That agent's CLI is not installed on the machine (not on the agent's PATH). Pick an installed agent, or install it there.",
  spawn_failed: "The CLI could not start or exited at once; its exit status and stderr are in the error. Check its setup on the machine.",
  agent_error: "The machine's agent failed unexpectedly; its log has the details.",
  bad_request: "The machine's agent is older than the hub and cannot read this request. Update the agent.",
  bad_result: "The hub cannot read the agent's answer (an agent newer than the hub). Update the hub.",
  job_failed: "The job failed without saying why.",
};

export function codeWords(code) {
  return CODES[code] || `Failed with code ${code}.`;
}

export function age(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function latency(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function clock(ms) {
  return ms === null || ms === undefined ? "–" : new Date(ms).toLocaleTimeString();
}

export function shortId(id) {
  // Job ids are "<machine>.<uuid>": show the last part, shortened.
  return String(id).split(".").pop().slice(0, 8);
}

export function machineName(m) {
  return m.displayName || m.id;
}

export function attachLine(sessionId) {
  return `tmux -L ${TMUX_SOCKET} attach -t ${sessionId}`;
}

// A read-only field with the command and a Copy button (which falls back to selecting the text
// where the clipboard API is not allowed, on plain http).
export function copyLine(text, role) {
  const input = el("input", { class: "mono copy-text", readonly: true, value: text, "aria-label": "Command to copy", dataset: { role } });
  input.value = text;
  const button = el("button", { type: "button", class: "ghost small" }, "Copy");
  button.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (err) {
      button.textContent = "Press Ctrl+C";
    }
  });
  return el("div", { class: "copy" }, input, button);
}

export function debounce(key, fn, ms = 120) {
  clearTimeout(state.timers.get(key));
  state.timers.set(key, setTimeout(() => { state.timers.delete(key); fn(); }, ms));
}

// A key for Idempotency-Key; crypto.randomUUID needs a secure context, getRandomValues does not.
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `dash-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function isFinal(s) {
  return s === "succeeded" || s === "failed" || s === "expired";
}
