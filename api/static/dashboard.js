// machine-hub dashboard: plain JavaScript modules, no build step, no libraries. Signs in with a
// pasted token, reads the machines and jobs, and follows /api/events to re-fetch what changed (no
// polling). EventSource cannot set headers, so the event stream is read with fetch and parsed
// here, reconnecting with Last-Event-ID; the token never goes into a URL.

import { $, ApiError, TOKEN_KEY, api, age, banner, debounce, handleError, hooks, isFinal, state } from "./common.js";
import { loadJobs, onJobEvent, renderMachineFilter, resetJobs, setupJobs } from "./jobs.js";
import {
  forgetPanel, loadMachines, machineHooks, refreshOpenPanel, resetMachines, setupMachineControls,
} from "./machines.js";
import { openSpawn, refreshPicker, setupSpawn } from "./spawn.js";

const RECONNECT_MS = 2000; // as EventSource, unless the hub says otherwise with `retry:`
const REFUSED_RETRY_MS = 5000;

function live(mode) {
  const node = $("live");
  node.dataset.state = mode;
  node.textContent = { on: "live", connecting: "reconnecting…", off: "offline" }[mode];
}

function showLogin(message) {
  state.generation += 1;
  closeEvents();
  state.token = null;
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  for (const id of ["board", "forget", "refresh", "namespace", "new-session"]) $(id).hidden = true;
  $("login").hidden = false;
  const err = $("login-error");
  err.textContent = message || "";
  err.hidden = !message;
  banner(null);
  live("off");
  $("token-input").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY); // left by versions that kept it there
  showLogin(message);
}
hooks.signOut = signOut;

// ---------- live events ----------

function closeEvents() {
  if (state.events) { state.events.abort.abort(); state.events = null; }
}

function openEvents() {
  closeEvents();
  const gen = state.generation;
  const events = { abort: new AbortController(), open: false };
  state.events = events;
  const current = () => gen === state.generation && state.events === events;
  let lastId = null;
  let retryMs = RECONNECT_MS;
  let everOpen = false;

  async function read(response) {
    // Server-Sent Events as the HTML standard parses them: fields until a blank line.
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", type = "", data = [], id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (id !== null) lastId = id;
          if (data.length) dispatch(type || "message", data.join("\n"));
          type = ""; data = []; id = null;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") type = val;
        else if (field === "data") data.push(val);
        else if (field === "id" && !val.includes("\0")) id = val;
        else if (field === "retry" && /^\d+$/.test(val)) retryMs = Number(val);
      }
    }
  }

  async function connect() {
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch("/api/events", { headers, cache: "no-store", signal: events.abort.signal });
    } catch (err) {
      return "lost";
    }
    if (!current()) return "stop";
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      const msg = body && body.error ? body.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, msg, body);
    }
    events.open = true;
    live("on");
    banner(null);
    // Catch up on what happened while the stream was down (or before the first load worked).
    if (everOpen || !state.loaded) refreshAll();
    everOpen = true;
    try { await read(response); } catch (err) { /* cut: reconnect below */ }
    events.open = false;
    return "lost";
  }

  (async () => {
    live("connecting");
    while (current()) {
      let outcome;
      try {
        outcome = await connect();
      } catch (err) {
        if (!current()) return;
        live("off");
        handleError(err, "Live updates");
        if (err.status === 401) return;
        await sleep(REFUSED_RETRY_MS);
        continue;
      }
      if (outcome === "stop" || !current()) return;
      live("connecting");
      banner("Lost the live connection to the hub; reconnecting…");
      await sleep(retryMs);
    }
  })();
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parse(text) {
  try { return JSON.parse(text); } catch (err) { return null; }
}

function dispatch(type, text) {
  const data = parse(text);
  if (type === "machine") {
    debounce("machines", loadMachines);
    if (data && data.state === "offline") forgetPanel(data.machineId);
  } else if (type === "job") {
    if (data) onJobEvent(data);
    debounce("jobs", loadJobs);
    debounce("machines", loadMachines, 250); // queue depth and in-flight counts moved
    // The session counts ride on heartbeats: read them again once the next beat is in.
    debounce("machines-settle", loadMachines, 1500);
    if (data && isFinal(data.state)) debounce(`sessions:${data.machineId}`, () => refreshOpenPanel(data.machineId), 300);
  }
}

function tick() {
  for (const node of document.querySelectorAll(".age[data-ts]")) {
    const ts = node.dataset.ts;
    node.textContent = ts === "" ? "never" : age(Number(ts));
  }
}

// ---------- start ----------

async function refreshAll() {
  const button = $("refresh");
  button.disabled = true;
  button.textContent = "Refreshing…";
  try {
    if (!(await loadMachines())) return;
    state.loaded = true;
    banner(null);
    await loadJobs();
  } finally {
    button.disabled = false;
    button.textContent = "Refresh";
  }
}

async function detectFeatures() {
  // Placement (POST /api/spawn) is offered only where this hub's description lists it.
  try {
    const spec = await api("/openapi.json", { auth: false });
    state.features.placement = !!(spec.paths && spec.paths["/api/spawn"]);
  } catch (err) {
    state.features.placement = false;
  }
}

async function start(token) {
  state.generation += 1;
  state.token = token;
  state.loaded = false;
  resetJobs();
  resetMachines();
  $("login").hidden = true;
  $("board").hidden = false;
  for (const id of ["forget", "refresh", "new-session"]) $(id).hidden = false;
  const gen = state.generation;
  state.loaded = await loadMachines();
  if (gen !== state.generation) return; // a bad token brought the form back
  // Unreachable hub: keep the token, the banner says so and the stream retries by itself.
  sessionStorage.setItem(TOKEN_KEY, token);
  openEvents();
  detectFeatures();
  if (state.loaded) await loadJobs();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    $("token-input").value = "";
    $("login-error").hidden = true;
    start(token);
  });
  $("forget").addEventListener("click", () => signOut(null));
  $("refresh").addEventListener("click", () => refreshAll());
  machineHooks.newSession = (machineId) => openSpawn(machineId);
  machineHooks.changed = () => { renderMachineFilter(); refreshPicker(); };
  setupMachineControls();
  setupJobs();
  setupSpawn();
  window.addEventListener("online", () => { if (state.token) refreshAll(); });
  setInterval(tick, 1000);
  localStorage.removeItem(TOKEN_KEY); // older versions kept it there, across sessions
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) start(saved);
  else showLogin(null);
});
