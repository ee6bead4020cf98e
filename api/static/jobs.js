// Jobs: the newest spawns and stops with filters by machine, kind and state, a latency chart, and
// one job's detail (kind, machine, arguments, timeline, result or error), all kept current by the
// job events of the live stream.

import {
  $, ApiError, age, api, clock, codeWords, describe, el, handleError, isFinal, latency, shortId, state,
} from "./common.js";

const JOB_LIMIT = 50;
const ARGS_KEY = "machine-hub.job-args"; // sessionStorage: the arguments of spawns made in this tab
const PROMPT_SHOWN = 120;
// `asked` numbers the list fetches: only the latest one's answer is shown, so a re-fetch that a job
// event started before the person changed a filter cannot bring the unfiltered list back.
const jobs = { list: [], fresh: new Set(), open: null, asked: 0 };

export function resetJobs() {
  jobs.list = [];
  jobs.fresh.clear();
}

// GET /api/jobs/:id gives the arguments the hub keeps (a prompt only by its size), so the page
// also keeps those of the spawns it made itself, for the prompt's start. Only that start is kept.
export function rememberArgs(jobId, args) {
  const kept = readArgs();
  kept[jobId] = "prompt" in args ? { ...args, prompt: shortPrompt(args.prompt) } : args;
  const ids = Object.keys(kept);
  for (const id of ids.slice(0, Math.max(0, ids.length - 100))) delete kept[id];
  try {
    sessionStorage.setItem(ARGS_KEY, JSON.stringify(kept));
  } catch (err) {
    // Storage full or refused: the detail then says the arguments are not known.
  }
}

function readArgs() {
  try { return JSON.parse(sessionStorage.getItem(ARGS_KEY) || "{}") || {}; } catch (err) { return {}; }
}

function jobQuery() {
  const params = new URLSearchParams({ limit: String(JOB_LIMIT) });
  for (const [name, id] of [["machineId", "filter-machine"], ["state", "filter-state"], ["kind", "filter-kind"]]) {
    const value = $(id).value;
    if (value) params.set(name, value);
  }
  return `/api/jobs?${params}`;
}

export async function loadJobs() {
  const ask = ++jobs.asked;
  $("jobs-loading").hidden = jobs.list.length > 0;
  try {
    const body = await api(jobQuery());
    if (ask !== jobs.asked) return;
    const before = new Map(jobs.list.map((j) => [j.id, j.state]));
    jobs.list = body.jobs || [];
    if (before.size) {
      for (const job of jobs.list) if (before.get(job.id) !== job.state) jobs.fresh.add(job.id);
    }
    renderJobs();
  } catch (err) {
    if (ask === jobs.asked) handleError(err, "Jobs");
  } finally {
    if (ask === jobs.asked) $("jobs-loading").hidden = true;
  }
}

export function onJobEvent(data) {
  // Show the new state at once; the re-fetch that follows fills in latency and errors.
  const job = jobs.list.find((j) => j.id === data.jobId);
  if (job) {
    job.state = data.state;
    if (data.code) job.code = data.code;
  } else if (matchesFilters(data)) {
    jobs.list.unshift({ id: data.jobId, kind: data.kind, machineId: data.machineId, state: data.state,
      createdAt: Date.now(), latencyMs: null, code: data.code });
    jobs.list.length = Math.min(jobs.list.length, JOB_LIMIT);
  }
  jobs.fresh.add(data.jobId);
  renderJobs();
  if (jobs.open === data.jobId) loadDetail(data.jobId);
}

function matchesFilters(data) {
  const m = $("filter-machine").value, s = $("filter-state").value, k = $("filter-kind").value;
  return (!m || data.machineId === m) && (!s || data.state === s) && (!k || data.kind === k);
}

export function renderMachineFilter() {
  const select = $("filter-machine");
  const current = select.value;
  const ids = state.machines.map((m) => m.id);
  if (current && !ids.includes(current)) ids.push(current);
  select.replaceChildren(el("option", { value: "" }, "all"), ...ids.map((id) => el("option", { value: id }, id)));
  select.value = current;
}

function jobError(job) {
  const result = job.result && typeof job.result === "object" ? job.result : {};
  const error = job.error || result.error || "";
  const code = job.code || result.code || "";
  if (error && code) return `${code}: ${error}`;
  return error || code || "";
}

function renderJobs() {
  const tbody = $("jobs").tBodies[0];
  tbody.replaceChildren(...jobs.list.map((job) =>
    el("tr", { class: jobs.fresh.has(job.id) ? "fresh" : null, dataset: { jobId: job.id, state: job.state } },
      el("td", { class: "mono", "data-label": "job" },
        el("button", { type: "button", class: "link mono", title: `Details of job ${job.id}`, onclick: () => openDetail(job.id) }, shortId(job.id))),
      el("td", { "data-label": "kind" }, job.kind),
      el("td", { class: "mono", "data-label": "machine" }, job.machineId),
      el("td", { "data-label": "state" }, el("span", { class: `badge ${job.state}` }, job.state)),
      el("td", { class: "age", "data-label": "age", dataset: { ts: job.createdAt ?? "" } }, age(job.createdAt)),
      el("td", { class: "num", "data-label": "latency" }, latency(job.latencyMs)),
      el("td", { class: "err", "data-label": "error" }, jobError(job)))));
  jobs.fresh.clear();
  $("jobs-empty").hidden = jobs.list.length > 0;
  $("job-count").textContent = jobs.list.length ? `latest ${jobs.list.length}` : "";
  renderChart();
}

function renderChart() {
  const svg = $("chart");
  const NS = "http://www.w3.org/2000/svg";
  const points = jobs.list.filter((j) => typeof j.latencyMs === "number").slice(0, 40).reverse();
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

// ---------- one job's detail ----------

export function openDetail(jobId) {
  jobs.open = jobId;
  $("job-title").textContent = `Job ${shortId(jobId)}`;
  $("job-body").replaceChildren(el("p", { class: "muted loading" }, "Loading the job…"));
  const dialog = $("job-dialog");
  if (!dialog.open) dialog.showModal();
  loadDetail(jobId);
}

async function loadDetail(jobId) {
  try {
    const job = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
    if (jobs.open === jobId) $("job-body").replaceChildren(...detail(job));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { handleError(err, "Job"); return; }
    if (jobs.open === jobId) $("job-body").replaceChildren(el("p", { class: "error", role: "alert" }, describe(err)));
  }
}

function shortPrompt(prompt) {
  if (typeof prompt !== "string") return prompt;
  return prompt.length > PROMPT_SHOWN ? `${prompt.slice(0, PROMPT_SHOWN)}… (${prompt.length} characters)` : prompt;
}

// The job record's arguments as the detail lists them: set fields only, the prompt by its size.
function storedArgs(args) {
  if (!args || typeof args !== "object") return null;
  const shown = {};
  for (const [k, v] of Object.entries(args)) {
    if (v === null || v === false || k === "promptSha256") continue;
    if (k === "promptBytes") shown.prompt = `(${v} bytes, not kept)`;
    else shown[k] = v;
  }
  return shown;
}

function detail(job) {
  const result = job.result && typeof job.result === "object" ? job.result : null;
  const args = readArgs()[job.id] || storedArgs(job.args);
  const step = (label, at, from) => el("li", { dataset: { step: label }, class: at ? "done" : "pending" },
    el("span", { class: "step" }, label), " ",
    at ? `${clock(at)}${from ? ` (+${latency(at - from)})` : ""}` : "not yet");
  const finishedLabel = job.state === "expired" ? "expired" : "finished";
  const out = [
    el("dl", { class: "facts" },
      el("dt", {}, "id"), el("dd", { class: "mono" }, job.id),
      el("dt", {}, "kind"), el("dd", { dataset: { role: "kind" } }, job.kind),
      el("dt", {}, "machine"), el("dd", { class: "mono", dataset: { role: "machine" } }, job.machineId),
      el("dt", {}, "state"), el("dd", {}, el("span", { class: `badge ${job.state}`, dataset: { role: "state" } }, job.state))),
    el("h3", {}, "Timeline"),
    el("ol", { class: "timeline" },
      step("queued", job.createdAt),
      step("claimed", job.claimedAt, job.createdAt),
      step(finishedLabel, job.finishedAt, job.createdAt)),
    el("h3", {}, "Arguments"),
  ];
  if (args) {
    out.push(el("dl", { class: "facts", dataset: { role: "args" } }, Object.entries(args).flatMap(([k, v]) =>
      [el("dt", {}, k), el("dd", { class: "mono" }, k === "prompt" ? v : JSON.stringify(v))])));
  } else {
    out.push(el("p", { class: "muted" }, "The hub kept no arguments for this job."));
  }
  out.push(el("h3", {}, "Result"));
  if (!result) {
    out.push(el("p", { class: "muted" }, isFinal(job.state) ? "No result was recorded." : "No result yet."));
  } else if (result.success === false || result.error) {
    out.push(el("p", { class: "error", role: "alert", dataset: { role: "job-error" } },
      result.code ? `${result.code}: ` : "", result.error || "", el("br"), result.code ? codeWords(result.code) : ""));
  } else {
    const facts = [];
    if (result.sessionId) facts.push(el("dt", {}, "session"), el("dd", { class: "mono" }, result.sessionId));
    if (result.directoryCreated) facts.push(el("dt", {}, "directory"), el("dd", {}, "created for this session"));
    if (result.worktree) {
      facts.push(el("dt", {}, "worktree"), el("dd", { class: "mono" }, result.worktree.path),
        el("dt", {}, "branch"), el("dd", { class: "mono" }, result.worktree.branch));
    }
    if (result.stopped) facts.push(el("dt", {}, "stopped"), el("dd", { class: "mono" }, result.sessionId || "yes"));
    out.push(facts.length ? el("dl", { class: "facts", dataset: { role: "result" } }, facts)
      : el("pre", { class: "mono", dataset: { role: "result" } }, JSON.stringify(result, null, 2)));
  }
  return out;
}

export function setupJobs() {
  $("filters").addEventListener("change", () => { jobs.list = []; loadJobs(); });
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("job-close").addEventListener("click", () => $("job-dialog").close());
  $("job-dialog").addEventListener("close", () => { jobs.open = null; });
}
