// Machines: one card each (online first, offline with their last-seen time), rename, drain and
// undrain, and a machine's sessions, fetched only when the person opens that machine (never for
// the whole fleet), each with its attach line and a Stop that asks first.

import {
  $, ApiError, age, api, attachLine, banner, copyLine, describe, el, handleError, machineName, machinePath, state,
} from "./common.js";
import { rememberArgs } from "./jobs.js";

const panels = new Map(); // machineId -> {loading, sessions, error, note} of an opened sessions panel
const cards = new Map(); // machineId -> {node, signature}
export const machineHooks = { newSession: (machineId) => {}, changed: () => {} };

export async function loadMachines() {
  $("machines-loading").hidden = state.loaded;
  try {
    const body = await api("/api/machines?include=offline");
    state.machines = (body.machines || []).slice().sort((a, b) =>
      (b.online === false ? 0 : 1) - (a.online === false ? 0 : 1) || String(a.id).localeCompare(String(b.id)));
    const ns = state.machines.length ? state.machines[0].namespace : null;
    if (ns) { $("namespace").textContent = `namespace ${ns}`; $("namespace").hidden = false; }
    renderMachines();
    machineHooks.changed();
    return true;
  } catch (err) {
    handleError(err, "Machines");
    return false;
  } finally {
    $("machines-loading").hidden = true;
  }
}

export function resetMachines() {
  panels.clear();
  cards.clear();
  $("machines").replaceChildren();
}

// Re-read the sessions of the machines whose panel is open (after a spawn or stop there).
export function refreshOpenPanel(machineId) {
  if (panels.has(machineId)) loadSessions(machineId);
}

export function forgetPanel(machineId) {
  if (panels.delete(machineId)) renderMachines();
}

async function loadSessions(machineId) {
  const panel = panels.get(machineId);
  if (!panel) return;
  panel.loading = true;
  panel.error = null;
  renderMachines();
  try {
    const body = await api(machinePath(machineId, "/sessions"));
    panel.sessions = body.sessions || [];
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === -1)) { handleError(err, "Sessions"); return; }
    panel.error = describe(err);
  }
  panel.loading = false;
  if (panels.get(machineId) === panel) renderMachines();
}

function togglePanel(machineId) {
  if (panels.has(machineId)) {
    panels.delete(machineId);
    renderMachines();
  } else {
    panels.set(machineId, { loading: true, sessions: null, error: null, note: null });
    loadSessions(machineId);
  }
}

export function renderMachines() {
  const root = $("machines");
  const online = state.machines.filter((m) => m.online !== false).length;
  $("machine-count").textContent = `${online} online / ${state.machines.length}`;
  $("machines-empty").hidden = state.machines.length > 0;
  const focused = document.activeElement;
  const focusCard = focused && focused.closest ? focused.closest("article.machine") : null;
  const focusAction = focused && focused.dataset ? focused.dataset.action : null;
  const nodes = state.machines.map((m) => {
    const { lastSeen, ...rest } = m;
    const signature = JSON.stringify([rest, panels.get(m.id) || null]);
    let entry = cards.get(m.id);
    if (!entry || entry.signature !== signature) {
      entry = { node: machineCard(m), signature };
      cards.set(m.id, entry);
    }
    const seen = entry.node.querySelector("[data-role=last-seen]");
    seen.dataset.ts = m.lastSeen ?? "";
    seen.textContent = age(m.lastSeen);
    return entry.node;
  });
  const ids = new Set(state.machines.map((m) => m.id));
  for (const id of cards.keys()) if (!ids.has(id)) cards.delete(id);
  root.replaceChildren(...nodes);
  // A card rebuilt under the keyboard focus gives it back to the same control.
  if (focusCard && !focusCard.isConnected && focusAction) {
    const again = root.querySelector(`article.machine[data-machine-id="${CSS.escape(focusCard.dataset.machineId)}"] [data-action="${focusAction}"]`);
    if (again) again.focus();
  }
}

function health(m) {
  const h = m.health;
  if (!h) return "–";
  const parts = [];
  if (h.load1 !== null && h.load1 !== undefined) parts.push(`load ${h.load1.toFixed(2)}${h.cores ? `/${h.cores}` : ""}`);
  if (h.memoryTotalBytes) parts.push(`mem ${Math.round((100 * (h.memoryUsedBytes || 0)) / h.memoryTotalBytes)}%`);
  return parts.join(" · ") || "–";
}

export function agentsText(m) {
  if (!m.agents) return "–";
  const names = Object.keys(m.agents);
  return names.length ? names.join(", ") : "none found";
}

export function labelsText(m) {
  const labels = Object.entries(m.labels || {});
  return labels.length ? labels.map(([k, v]) => `${k}=${v}`).join(", ") : "–";
}

export function sessionCount(m) {
  if (m.online === false || m.sessions === null || m.sessions === undefined) return "–";
  return m.maxSessions ? `${m.sessions} / ${m.maxSessions}` : String(m.sessions);
}

function machineCard(m) {
  const meta = m.metadata || {};
  const isOnline = m.online !== false;
  const open = panels.has(m.id);
  const id = `sessions-${m.id}`;
  return el("article", { class: open ? "machine open" : "machine", dataset: { online: String(isOnline), machineId: m.id } },
    el("div", { class: "name" },
      el("span", { class: "title" },
        el("span", { class: "id", dataset: { role: "machine-name" } }, machineName(m)),
        m.displayName ? el("span", { class: "sub mono" }, m.id) : null),
      el("span", { class: "badges" },
        m.drained ? el("span", { class: "badge drained", dataset: { role: "machine-drained" }, title: "takes no new sessions" }, "drained") : null,
        el("span", { class: `badge ${isOnline ? "online" : "offline"}`, dataset: { role: "machine-state" } }, isOnline ? "online" : "offline"))),
    el("dl", {},
      el("dt", {}, "last seen"), el("dd", { class: "age", dataset: { role: "last-seen", ts: m.lastSeen ?? "" } }, age(m.lastSeen)),
      el("dt", {}, "platform"), el("dd", {}, `${meta.platform || "–"}${meta.launcher ? ` · ${meta.launcher}` : ""}${meta.version ? ` · v${meta.version}` : ""}`),
      el("dt", {}, "host"), el("dd", {}, meta.hostname || "–"),
      el("dt", {}, "health"), el("dd", { dataset: { role: "health" } }, health(m)),
      el("dt", {}, "agents"), el("dd", { dataset: { role: "agents" } }, agentsText(m)),
      el("dt", {}, "labels"), el("dd", { dataset: { role: "labels" } }, labelsText(m)),
      el("dt", {}, "queue"), el("dd", { dataset: { role: "queue" } }, `${m.queueDepth ?? "–"} waiting · ${m.inFlight ?? "–"} in flight`),
      el("dt", {}, "sessions"), el("dd", { dataset: { role: "sessions" } }, sessionCount(m))),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "ghost small", "aria-expanded": String(open), "aria-controls": id, disabled: !isOnline && !open,
        dataset: { action: "sessions" }, onclick: () => togglePanel(m.id) }, open ? "Hide sessions" : "Sessions"),
      el("button", { type: "button", class: "ghost small", dataset: { action: "new-session" }, disabled: !isOnline || m.drained,
        onclick: () => machineHooks.newSession(m.id) }, "New session"),
      el("button", { type: "button", class: "ghost small", dataset: { action: "rename" }, onclick: () => rename(m) }, "Rename"),
      el("button", { type: "button", class: "ghost small", dataset: { action: "drain" }, onclick: (ev) => setDrained(m, !m.drained, ev.currentTarget) },
        m.drained ? "Undrain" : "Drain")),
    open ? sessionsPanel(m, id) : null);
}

function sessionsPanel(m, id) {
  const panel = panels.get(m.id);
  const body = [];
  if (panel.note) body.push(el("p", { class: "note", role: "status" }, panel.note));
  if (panel.error) body.push(el("p", { class: "error", role: "alert" }, `Sessions: ${panel.error}`));
  if (panel.loading && !panel.sessions) body.push(el("p", { class: "muted loading" }, "Loading sessions…"));
  if (panel.sessions) {
    if (!panel.sessions.length) body.push(el("p", { class: "muted" }, "No sessions run on this machine."));
    body.push(el("ul", { class: "session-list" }, panel.sessions.map((s) => sessionItem(m, s))));
  }
  return el("section", { class: "sessions-panel", id, "aria-label": `Sessions on ${machineName(m)}`, "aria-busy": String(!!panel.loading) },
    el("div", { class: "panel-head" },
      el("h3", {}, "Sessions", panel.loading && panel.sessions ? el("span", { class: "muted loading" }, " refreshing…") : null),
      el("button", { type: "button", class: "ghost small", dataset: { action: "reload-sessions" }, onclick: () => loadSessions(m.id) }, "Reload")),
    body);
}

function sessionItem(m, s) {
  const where = s.worktree ? s.worktree.path : s.directory;
  return el("li", { class: "session", dataset: { sessionId: s.sessionId } },
    el("div", { class: "session-head" },
      el("strong", {}, s.agent, s.worktree ? ` · worktree ${s.worktree.branch}` : ""),
      el("button", { type: "button", class: "danger small", dataset: { action: `stop-${s.sessionId}` },
        onclick: () => stopSession(m, s) }, "Stop")),
    el("div", { class: "mono where" }, where),
    el("div", { class: "muted small-text" }, `session ${s.sessionId} · started ${age(s.startedAt)}`),
    s.launcher === "tmux"
      ? copyLine(attachLine(s.sessionId), "attach")
      : el("div", { class: "muted small-text" }, `${s.launcher} launcher: no tmux session to attach to`));
}

// A modal that asks before an action; resolves true when the person confirms.
export function confirmAction(title, text, okLabel) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function stopSession(m, s) {
  const where = s.worktree ? s.worktree.path : s.directory;
  const ok = await confirmAction("Stop this session?", `${s.agent} in ${where} on ${machineName(m)} gets SIGTERM, then SIGKILL. Its worktree is kept.`, "Stop session");
  if (!ok) return;
  const panel = panels.get(m.id);
  if (!panel) return;
  panel.note = `Stopping session ${s.sessionId}…`;
  renderMachines();
  try {
    const body = await api(machinePath(m.id, `/sessions/${encodeURIComponent(s.sessionId)}/stop`), { method: "POST" });
    panel.note = `Stopped session ${body.sessionId}.`;
    rememberArgs(body.jobId, { sessionId: s.sessionId });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { handleError(err, "Stop"); return; }
    panel.note = null;
    panel.error = `Could not stop ${s.sessionId}: ${describe(err)}`;
  }
  loadSessions(m.id);
}

async function setDrained(m, drained, button) {
  if (drained && !(await confirmAction(`Drain ${machineName(m)}?`, "It takes no new sessions until you undrain it; its running sessions go on.", "Drain"))) return;
  button.disabled = true;
  button.textContent = drained ? "Draining…" : "Undraining…";
  try {
    await api(machinePath(m.id, drained ? "/drain" : "/undrain"), { method: "POST" });
  } catch (err) {
    banner(`${drained ? "Drain" : "Undrain"} ${machineName(m)}: ${describe(err)}`, "error");
  }
  await loadMachines();
}

function rename(m) {
  const dialog = $("rename-dialog");
  $("rename-title").textContent = `Rename ${m.id}`;
  $("rename-input").value = m.displayName || "";
  $("rename-error").hidden = true;
  dialog.dataset.machineId = m.id;
  dialog.showModal();
  $("rename-input").select();
}

export function setupMachineControls() {
  $("rename-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const dialog = $("rename-dialog");
    const save = $("rename-save");
    const value = $("rename-input").value.trim();
    save.disabled = true;
    save.textContent = "Saving…";
    try {
      await api(machinePath(dialog.dataset.machineId), { method: "PATCH", body: { displayName: value || null } });
      dialog.close();
      await loadMachines();
    } catch (err) {
      $("rename-error").textContent = describe(err);
      $("rename-error").hidden = false;
    } finally {
      save.disabled = false;
      save.textContent = "Save";
    }
  });
  $("rename-cancel").addEventListener("click", () => $("rename-dialog").close());
  $("confirm-ok").addEventListener("click", () => $("confirm-dialog").close("ok"));
  $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close(""));
}
