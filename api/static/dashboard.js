// machine-hub dashboard: plain JavaScript, no build step, no libraries.
// Reads /api/machines, /api/jobs and /api/machines/:id/sessions with the pasted token and
// follows /api/events (EventSource) to re-fetch what changed. No polling.
"use strict";

(() => {
  const TOKEN_KEY = "machine-hub.token";
  const JOB_LIMIT = 50;
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    machines: [],
    jobs: [],
    sessions: new Map(), // machineId -> sessions[] | {error}
    events: null,
    loaded: false,
    generation: 0, // bumps on sign-out so late answers of an old session are dropped
    fresh: new Set(),
    timers: new Map(),
  };

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  // ---------- helpers ----------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function age(ms) {
    if (ms === null || ms === undefined) return "never";
    const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  function latency(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function shortId(id) {
    // Job ids are "<machine>.<uuid>": show the last part, shortened.
    const tail = String(id).split(".").pop();
    return tail.slice(0, 8);
  }

  function sessionPath(s) {
    if (s.worktree && typeof s.worktree === "object") return s.worktree.path || s.directory;
    return s.worktree || s.directory || "";
  }

  function shortPath(path) {
    const parts = String(path).split("/").filter(Boolean);
    return parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : path;
  }

  function jobError(job) {
    const result = job.result && typeof job.result === "object" ? job.result : {};
    const error = job.error || result.error || "";
    const code = job.code || result.code || "";
    if (error && code) return `${code}: ${error}`;
    return error || code || "";
  }

  function debounce(key, fn, ms = 120) {
    clearTimeout(state.timers.get(key));
    state.timers.set(key, setTimeout(() => { state.timers.delete(key); fn(); }, ms));
  }

  // ---------- banner, login ----------

  function banner(message, kind = "warn") {
    const node = $("banner");
    if (!message) { node.hidden = true; node.textContent = ""; return; }
    node.textContent = message;
    node.dataset.kind = kind;
    node.hidden = false;
  }

  function live(mode) {
    const node = $("live");
    node.dataset.state = mode;
    node.textContent = { on: "live", connecting: "reconnecting…", off: "offline" }[mode];
  }

  function showLogin(message) {
    state.generation += 1;
    closeEvents();
    state.token = null;
    $("board").hidden = true;
    $("forget").hidden = true;
    $("refresh").hidden = true;
    $("namespace").hidden = true;
    $("login").hidden = false;
    const err = $("login-error");
    err.textContent = message || "";
    err.hidden = !message;
    banner(null);
    live("off");
    $("token-input").focus();
  }

  function signOut(message) {
    localStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  // ---------- API ----------

  async function api(path) {
    const gen = state.generation;
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "Cannot reach the hub (network error). Retrying when it is back.");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (gen !== state.generation) throw new ApiError(-1, "stale");
    if (!response.ok) {
      const msg = body && body.error ? body.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, msg, body);
    }
    if (body === null) throw new ApiError(response.status, `${path} did not answer JSON`);
    return body;
  }

  function handleError(err, what) {
    if (!(err instanceof ApiError)) { console.error(err); banner(`${what}: ${err}`, "error"); return; }
    if (err.status === -1) return;
    if (err.status === 401) { signOut(`The hub refused this token (${err.message}). Paste a valid token.`); return; }
    if (err.status === 0) { banner("Cannot reach the hub. Live updates resume by themselves when it is back.", "error"); return; }
    if (err.status === 503) { banner(`The hub cannot reach Redis (${err.message}).`, "error"); return; }
    if (err.status === 404 && (err.body === null || err.message === "Not Found")) {
      banner(`${what}: this hub does not serve that route (HTTP 404). Is it an older machine-hub?`, "error");
      return;
    }
    banner(`${what}: ${err.message}`, "error");
  }

  async function loadMachines() {
    try {
      const body = await api("/api/machines?include=offline");
      state.machines = (body.machines || []).slice().sort((a, b) =>
        (b.online === false ? 0 : 1) - (a.online === false ? 0 : 1) || String(a.id).localeCompare(String(b.id)));
      const ns = state.machines.length ? state.machines[0].namespace : null;
      if (ns) { $("namespace").textContent = `namespace ${ns}`; $("namespace").hidden = false; }
      renderMachines();
      renderMachineFilter();
      clearBannerIfOk();
      return true;
    } catch (err) {
      handleError(err, "Machines");
      return false;
    }
  }

  async function loadSessions(machineId) {
    const machine = state.machines.find((m) => m.id === machineId);
    if (!machine || machine.online === false) { state.sessions.delete(machineId); renderMachines(); return; }
    try {
      const body = await api(`/api/machines/${encodeURIComponent(machineId)}/sessions`);
      state.sessions.set(machineId, body.sessions || []);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 0 || err.status === -1)) {
        handleError(err, "Sessions");
        return;
      }
      state.sessions.set(machineId, { error: err.message });
    }
    renderMachines();
  }

  function jobQuery() {
    const params = new URLSearchParams({ limit: String(JOB_LIMIT) });
    for (const [name, id] of [["machineId", "filter-machine"], ["state", "filter-state"], ["kind", "filter-kind"]]) {
      const value = $(id).value;
      if (value) params.set(name, value);
    }
    return `/api/jobs?${params}`;
  }

  async function loadJobs() {
    try {
      const body = await api(jobQuery());
      const before = new Map(state.jobs.map((j) => [j.id, j.state]));
      state.jobs = body.jobs || [];
      if (before.size) {
        for (const job of state.jobs) if (before.get(job.id) !== job.state) state.fresh.add(job.id);
      }
      renderJobs();
      clearBannerIfOk();
    } catch (err) {
      handleError(err, "Jobs");
    }
  }

  function clearBannerIfOk() {
    if (state.events && state.events.readyState === EventSource.OPEN) banner(null);
  }

  // ---------- live events ----------

  function closeEvents() {
    if (state.events) { state.events.close(); state.events = null; }
  }

  function openEvents() {
    closeEvents();
    const gen = state.generation;
    const source = new EventSource(`/api/events?token=${encodeURIComponent(state.token)}`);
    state.events = source;
    live("connecting");
    let everOpen = false;
    source.onopen = () => {
      if (gen !== state.generation) return;
      live("on");
      banner(null);
      // Catch up on what happened while the stream was down (or before the first load worked).
      if (everOpen || !state.loaded) refreshAll();
      everOpen = true;
    };
    source.onerror = async () => {
      if (gen !== state.generation) return;
      if (source.readyState === EventSource.CONNECTING) {
        live("connecting");
        banner("Lost the live connection to the hub; reconnecting…");
        return;
      }
      // CLOSED: the hub answered with an error (bad token, missing route); find out which.
      live("off");
      try {
        await api("/api/machines");
      } catch (err) {
        handleError(err, "Live updates");
        if (err instanceof ApiError && (err.status === 401 || err.status === -1)) return;
      }
      if (gen !== state.generation) return;
      banner("The hub refused the live event stream (/api/events); retrying in 5 s. Lists update on Refresh.", "error");
      setTimeout(() => { if (gen === state.generation && state.events === source) openEvents(); }, 5000);
    };
    source.addEventListener("machine", (ev) => {
      const data = parse(ev.data);
      debounce("machines", loadMachines);
      if (data && data.machineId && data.state !== "offline") debounce(`sessions:${data.machineId}`, () => loadSessions(data.machineId), 300);
      if (data && data.state === "offline") state.sessions.delete(data.machineId);
    });
    source.addEventListener("job", (ev) => {
      const data = parse(ev.data);
      if (data) applyJobEvent(data);
      debounce("jobs", loadJobs);
      debounce("machines", loadMachines, 250); // queue depth and in-flight counts moved
      if (data && (data.kind === "spawn" || data.kind === "stop") && isFinal(data.state)) {
        debounce(`sessions:${data.machineId}`, () => loadSessions(data.machineId), 300);
      }
    });
  }

  function parse(text) {
    try { return JSON.parse(text); } catch (err) { return null; }
  }

  function isFinal(s) {
    return s === "succeeded" || s === "failed" || s === "expired";
  }

  function applyJobEvent(data) {
    // Show the new state at once; the re-fetch that follows fills in latency and errors.
    const job = state.jobs.find((j) => j.id === data.jobId);
    if (job) {
      job.state = data.state;
      if (data.code) job.code = data.code;
    } else if (matchesFilters(data)) {
      state.jobs.unshift({ id: data.jobId, kind: data.kind, machineId: data.machineId, state: data.state,
        createdAt: Date.now(), latencyMs: null, code: data.code });
      state.jobs.length = Math.min(state.jobs.length, JOB_LIMIT);
    }
    state.fresh.add(data.jobId);
    renderJobs();
  }

  function matchesFilters(data) {
    const m = $("filter-machine").value, s = $("filter-state").value, k = $("filter-kind").value;
    return (!m || data.machineId === m) && (!s || data.state === s) && (!k || data.kind === k);
  }

  // ---------- rendering ----------

  function renderMachines() {
    const root = $("machines");
    const online = state.machines.filter((m) => m.online !== false).length;
    $("machine-count").textContent = `${online} online / ${state.machines.length}`;
    $("machines-empty").hidden = state.machines.length > 0;
    root.replaceChildren(...state.machines.map(machineCard));
  }

  function machineCard(m) {
    const meta = m.metadata || {};
    const isOnline = m.online !== false;
    const sessions = state.sessions.get(m.id);
    let sessionList = null;
    let sessionCount = isOnline ? "…" : "–";
    if (Array.isArray(sessions)) {
      sessionCount = String(sessions.length);
      sessionList = el("ul", { class: "sessions" }, ...sessions.slice(0, 5).map((s) =>
        el("li", { title: sessionPath(s) }, `${s.agent} · ${shortPath(sessionPath(s))}`)));
    } else if (sessions && sessions.error) {
      sessionCount = "?";
      sessionList = el("ul", { class: "sessions" }, el("li", {}, `sessions: ${sessions.error}`));
    }
    return el("article", { class: "machine", dataset: { online: String(isOnline), machineId: m.id } },
      el("div", { class: "name" },
        el("span", { class: "id" }, m.id),
        el("span", { class: `badge ${isOnline ? "online" : "offline"}`, dataset: { role: "machine-state" } }, isOnline ? "online" : "offline")),
      el("dl", {},
        el("dt", {}, "host"), el("dd", {}, meta.hostname || "–"),
        el("dt", {}, "platform"), el("dd", {}, `${meta.platform || "–"}${meta.launcher ? ` · ${meta.launcher}` : ""}`),
        el("dt", {}, "version"), el("dd", {}, meta.version || "–"),
        el("dt", {}, "last seen"), el("dd", { class: "age", dataset: { ts: m.lastSeen ?? "" } }, age(m.lastSeen)),
        el("dt", {}, "queue"), el("dd", { dataset: { role: "queue" } }, m.queueDepth ?? "–"),
        el("dt", {}, "in flight"), el("dd", { dataset: { role: "in-flight" } }, m.inFlight ?? "–"),
        el("dt", {}, "sessions"), el("dd", { dataset: { role: "sessions" } }, sessionCount)),
      sessionList);
  }

  function renderMachineFilter() {
    const select = $("filter-machine");
    const current = select.value;
    const ids = state.machines.map((m) => m.id);
    if (current && !ids.includes(current)) ids.push(current);
    select.replaceChildren(el("option", { value: "" }, "all"), ...ids.map((id) => el("option", { value: id }, id)));
    select.value = current;
  }

  function renderJobs() {
    const tbody = $("jobs").tBodies[0];
    tbody.replaceChildren(...state.jobs.map((job) => {
      const err = jobError(job);
      const row = el("tr", { class: state.fresh.has(job.id) ? "fresh" : null, dataset: { jobId: job.id, state: job.state } },
        el("td", { class: "mono", "data-label": "job", title: job.id }, shortId(job.id)),
        el("td", { "data-label": "kind" }, job.kind),
        el("td", { class: "mono", "data-label": "machine" }, job.machineId),
        el("td", { "data-label": "state" }, el("span", { class: `badge ${job.state}` }, job.state)),
        el("td", { class: "age", "data-label": "age", dataset: { ts: job.createdAt ?? "" } }, age(job.createdAt)),
        el("td", { class: "num", "data-label": "latency" }, latency(job.latencyMs)),
        el("td", { class: "err", "data-label": "error" }, err));
      return row;
    }));
    state.fresh.clear();
    $("jobs-empty").hidden = state.jobs.length > 0;
    $("job-count").textContent = state.jobs.length ? `latest ${state.jobs.length}` : "";
    renderChart();
  }

  function renderChart() {
    const svg = $("chart");
    const NS = "http://www.w3.org/2000/svg";
    const points = state.jobs.filter((j) => typeof j.latencyMs === "number").slice(0, 40).reverse();
    const W = 600, H = 120, PAD = 6;
    const nodes = [];
    const max = Math.max(1, ...points.map((j) => j.latencyMs));
    for (const frac of [0.25, 0.5, 0.75]) {
      const line = document.createElementNS(NS, "line");
      const y = PAD + (H - 2 * PAD) * frac;
      Object.entries({ x1: 0, x2: W, y1: y, y2: y, class: "grid" }).forEach(([k, v]) => line.setAttribute(k, v));
      nodes.push(line);
    }
    const slot = (W - 2 * PAD) / Math.max(points.length, 20);
    points.forEach((job, i) => {
      const h = Math.max(2, ((H - 2 * PAD) * job.latencyMs) / max);
      const rect = document.createElementNS(NS, "rect");
      Object.entries({
        x: PAD + i * slot + slot * 0.15, y: H - PAD - h, width: slot * 0.7, height: h, class: `bar-${job.state}`,
      }).forEach(([k, v]) => rect.setAttribute(k, v));
      const title = document.createElementNS(NS, "title");
      title.textContent = `${job.kind} ${shortId(job.id)}: ${latency(job.latencyMs)} (${job.state})`;
      rect.append(title);
      nodes.push(rect);
    });
    svg.replaceChildren(...nodes);
    if (!points.length) {
      $("chart-caption").textContent = "Latency of finished jobs appears here.";
      return;
    }
    const sorted = points.map((j) => j.latencyMs).sort((a, b) => a - b);
    const p50 = sorted[Math.floor((sorted.length - 1) * 0.5)];
    $("chart-caption").textContent =
      `Latency of the last ${points.length} finished jobs, oldest left · p50 ${latency(p50)} · max ${latency(max)}`;
  }

  function tick() {
    for (const node of document.querySelectorAll(".age[data-ts]")) {
      const ts = node.dataset.ts;
      node.textContent = ts === "" ? "never" : age(Number(ts));
    }
  }

  // ---------- start ----------

  async function refreshAll() {
    const ok = await loadMachines();
    if (!ok) return;
    state.loaded = true;
    await loadJobs();
    for (const m of state.machines) if (m.online !== false) loadSessions(m.id);
  }

  async function start(token) {
    state.generation += 1;
    state.token = token;
    state.jobs = [];
    state.sessions.clear();
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget").hidden = false;
    $("refresh").hidden = false;
    const gen = state.generation;
    state.loaded = await loadMachines();
    if (gen !== state.generation) return; // a bad token brought the form back
    // Unreachable hub: keep the token, the banner says so and the stream retries by itself.
    localStorage.setItem(TOKEN_KEY, token);
    openEvents();
    if (!state.loaded) return;
    await loadJobs();
    for (const m of state.machines) if (m.online !== false) loadSessions(m.id);
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
    $("filters").addEventListener("change", () => { state.jobs = []; loadJobs(); });
    $("filters").addEventListener("submit", (ev) => ev.preventDefault());
    window.addEventListener("online", () => { if (state.token) refreshAll(); });
    setInterval(tick, 1000);
    const saved = localStorage.getItem(TOKEN_KEY);
    if (saved) start(saved);
    else showLogin(null);
  });
})();
