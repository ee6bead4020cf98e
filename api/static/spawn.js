// The New session dialog: pick a machine, a folder (folders.js: recent ones, a live existence
// check, a folder browser), the agent and how to run it, then start it. Every attempt of one dialog carries the
// same Idempotency-Key, so a double click or a retry after a lost answer starts one session.

import {
  $, ApiError, age, api, attachLine, codeWords, copyLine, describe, el, handleError, machineName, machinePath,
  newKey, state,
} from "./common.js";
import { agentsText, labelsText, refreshOpenPanel, sessionCount } from "./machines.js";
import { checkDirectory, clearRecent, loadRecent, setupFolders } from "./folders.js";
import { openDetail, rememberArgs } from "./jobs.js";

const ANY = "*any*";
const LAST_MACHINE_KEY = "machine-hub.last-machine"; // not a secret: localStorage, as HAPI does
const AGENTS = ["claude", "codex", "cursor", "gemini", "opencode"];

const dialog = {
  key: null, // the Idempotency-Key of this dialog's request
  settled: false, // a definite answer came: the next attempt is a new request
  inFlight: false,
  signature: "",
};

function selectable(m) {
  if (m.online === false) return { ok: false, why: `offline, last seen ${age(m.lastSeen)}` };
  if (m.drained) return { ok: false, why: "drained: takes no new sessions" };
  if (m.maxSessions && m.sessions !== null && m.sessions >= m.maxSessions) {
    return { ok: false, why: `full: ${m.sessions} / ${m.maxSessions} sessions` };
  }
  return { ok: true, why: "" };
}

function picked() {
  const radio = document.querySelector("#machine-options input[name=machine]:checked");
  return radio ? radio.value : null;
}

function pickedMachine() {
  const id = picked();
  return state.machines.find((m) => m.id === id) || null;
}

export function openSpawn(machineId) {
  dialog.key = newKey();
  dialog.settled = false;
  dialog.signature = "";
  $("spawn-form").reset();
  $("spawn-result").replaceChildren();
  $("spawn-result").hidden = true;
  showError(null);
  $("browser").hidden = true;
  $("directory-status").textContent = "";
  $("spawn-submit").textContent = "Start session";
  $("spawn-submit").hidden = false;
  $("spawn-again").hidden = true;
  renderPicker(machineId || localStorage.getItem(LAST_MACHINE_KEY));
  onSessionType();
  if (!$("spawn-dialog").open) $("spawn-dialog").showModal();
  const first = document.querySelector("#machine-options input:checked") || $("spawn-directory");
  first.focus();
  onMachine();
}

// Called when the machine list changes: the picker follows while the dialog is open.
export function refreshPicker() {
  if ($("spawn-dialog").open) renderPicker(picked());
}

function renderPicker(wanted) {
  const machines = state.machines;
  const options = [];
  if (state.features.placement) options.push({ id: ANY, name: "Any suitable machine", info: "the hub picks an online machine that fits", ok: true });
  for (const m of machines) {
    const { ok, why } = selectable(m);
    const info = [
      m.online === false ? null : `sessions ${sessionCount(m)}`,
      `agents ${agentsText(m)}`,
      Object.keys(m.labels || {}).length ? `labels ${labelsText(m)}` : null,
      m.health && m.health.load1 !== null ? `load ${m.health.load1.toFixed(2)}` : null,
    ].filter(Boolean).join(" · ");
    options.push({ id: m.id, name: machineName(m), info, ok, why });
  }
  const signature = JSON.stringify([options, wanted]);
  if (signature === dialog.signature) return;
  dialog.signature = signature;
  const usable = options.filter((o) => o.ok);
  const choice = usable.find((o) => o.id === wanted) || usable.find((o) => o.id !== ANY) || usable[0];
  const hadFocus = $("machine-options").contains(document.activeElement);
  $("machine-options").replaceChildren(...options.map((o) => el("label", { class: `option${o.ok ? "" : " unavailable"}`, dataset: { machineId: o.id } },
    el("input", { type: "radio", name: "machine", value: o.id, disabled: !o.ok, checked: choice && choice.id === o.id }),
    el("span", {},
      el("strong", {}, o.name), o.why ? el("span", { class: "badge warn-badge" }, o.why) : null,
      el("span", { class: "muted small-text block" }, o.info)))));
  $("machines-none").hidden = usable.length > 0;
  if (hadFocus) {
    const again = document.querySelector("#machine-options input:checked");
    if (again) again.focus();
  }
  if ($("spawn-dialog").open && picked() !== wanted) onMachine(); // the picked one became unavailable
}

function onMachine() {
  const id = picked();
  const machine = pickedMachine();
  const real = !!machine;
  $("browse").disabled = !real;
  renderAgents(machine);
  clearRecent();
  if (!real) {
    $("directory-status").textContent = id === ANY ? "The folder is checked on the machine the hub picks." : "";
    return;
  }
  loadRecent(machine.id);
  checkDirectory();
}

function renderAgents(machine) {
  const select = $("spawn-agent");
  const current = select.value || "claude";
  const found = machine && machine.agents ? machine.agents : null;
  select.replaceChildren(...AGENTS.map((name) => {
    const missing = found !== null && !(name in found);
    const version = found && found[name] ? ` ${found[name]}` : "";
    return el("option", { value: name, disabled: missing }, missing ? `${name} (not installed there)` : `${name}${version}`);
  }));
  const usable = AGENTS.filter((name) => found === null || name in found);
  select.value = usable.includes(current) ? current : usable[0] || current;
}

function sessionType() {
  const radio = document.querySelector("#spawn-form input[name=sessionType]:checked");
  return radio ? radio.value : "simple";
}

function onSessionType() {
  const worktree = sessionType() === "worktree";
  $("worktree-fields").hidden = !worktree;
  $("spawn-worktree-name").required = worktree;
}

// ---------- submit ----------

function spawnBody() {
  const body = { directory: $("spawn-directory").value.trim(), agent: $("spawn-agent").value, yolo: $("spawn-yolo").checked, sessionType: sessionType() };
  const model = $("spawn-model").value.trim();
  if (model) body.model = model;
  if (body.sessionType === "worktree") {
    body.worktreeName = $("spawn-worktree-name").value.trim();
    if ($("spawn-reuse").checked) body.reuseWorktree = true;
  }
  const prompt = $("spawn-prompt").value;
  if (prompt.trim()) body.prompt = prompt;
  return body;
}

function showError(message, hint) {
  const box = $("spawn-error");
  box.replaceChildren(...(message ? [el("strong", {}, message), hint ? el("span", { class: "block" }, hint) : null] : []));
  box.hidden = !message;
}

async function submit(ev) {
  ev.preventDefault();
  if (dialog.inFlight) return; // the second click of a double click: the first one's request runs
  const target = picked();
  if (!target) { showError("Pick a machine first.", "No machine can take a session now: see why next to each one."); return; }
  // The key stays while the outcome is uncertain (no answer, outcome_unknown, a 5xx), so a retry
  // cannot start a second session. After a definite answer nothing runs from it: a new attempt
  // is a new request with its own key.
  if (dialog.settled) { dialog.key = newKey(); dialog.settled = false; }
  const body = spawnBody();
  const button = $("spawn-submit");
  dialog.inFlight = true;
  button.disabled = true;
  button.textContent = "Starting…";
  $("spawn-form").setAttribute("aria-busy", "true");
  showError(null);
  const path = target === ANY ? "/api/spawn" : machinePath(target, "/spawn");
  try {
    const answer = await api(path, { method: "POST", body, headers: { "Idempotency-Key": dialog.key } });
    const machineId = answer.machineId || target;
    if (answer.jobId) rememberArgs(answer.jobId, body);
    if (answer.success) {
      dialog.settled = true;
      if (target !== ANY) localStorage.setItem(LAST_MACHINE_KEY, target);
      showResult(answer, machineId);
      refreshOpenPanel(machineId);
    } else if (answer.code === "outcome_unknown") {
      showError(`${answer.code}: ${answer.error}`, `${codeWords(answer.code)} Start again sends the same request (same Idempotency-Key), so it cannot start a second session.`);
      showJobLink(answer.jobId);
    } else {
      dialog.settled = true;
      showError(`${answer.code || "failed"}: ${answer.error || "the spawn failed"}`, codeWords(answer.code || "job_failed"));
      showCandidates(answer.candidates);
      showJobLink(answer.jobId);
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { handleError(err, "New session"); return; }
    if (err instanceof ApiError && err.status === 0) {
      showError("The hub did not answer: the session may or may not have started.",
        "Press Start session again: it resends the same request with the same Idempotency-Key, so at most one session starts.");
    } else if (err instanceof ApiError && err.status === 422) {
      dialog.key = newKey();
      showError("This dialog already sent a different request.",
        "Its first attempt may have started a session: look at the machine's sessions before you start again.");
    } else {
      dialog.settled = err instanceof ApiError && err.status >= 400 && err.status < 500;
      showError(describe(err), err.status === 400 ? "Correct the field it names and start again." : null);
    }
  } finally {
    dialog.inFlight = false;
    button.disabled = false;
    $("spawn-form").setAttribute("aria-busy", "false");
    if (!button.hidden) button.textContent = "Start session";
  }
}

// A placed spawn no machine took (no_machine): why each machine of the namespace did not fit.
function showCandidates(candidates) {
  if (!Array.isArray(candidates) || candidates.length === 0) return;
  $("spawn-error").append(el("ul", { class: "candidates" }, ...candidates.map((c) =>
    el("li", { dataset: { machineId: c.machineId } }, el("span", { class: "mono" }, c.machineId), `: ${c.reason.replaceAll("_", " ")}`))));
}

function showJobLink(jobId) {
  if (!jobId) return;
  $("spawn-error").append(el("button", { type: "button", class: "link", onclick: () => openDetail(jobId) }, "Open the job"));
}

function showResult(answer, machineId) {
  const machine = state.machines.find((m) => m.id === machineId);
  const launcher = machine && machine.metadata ? machine.metadata.launcher : null;
  const facts = [
    el("dt", {}, "session"), el("dd", { class: "mono", dataset: { role: "session-id" } }, answer.sessionId),
    el("dt", {}, "machine"), el("dd", { class: "mono" }, machine ? machineName(machine) : machineId),
  ];
  if (answer.directoryCreated) facts.push(el("dt", {}, "folder"), el("dd", { dataset: { role: "created" } }, "created for this session"));
  if (answer.worktree) {
    facts.push(el("dt", {}, "worktree"), el("dd", { class: "mono", dataset: { role: "worktree-path" } }, answer.worktree.path),
      el("dt", {}, "branch"), el("dd", { class: "mono", dataset: { role: "worktree-branch" } }, answer.worktree.branch));
  }
  const box = $("spawn-result");
  box.replaceChildren(
    el("h3", {}, "Session started"),
    el("dl", { class: "facts" }, facts),
    launcher === "pty"
      ? el("p", { class: "muted" }, "This machine runs sessions without tmux: there is nothing to attach to.")
      : el("div", {}, el("p", { class: "muted small-text" }, "Attach to it on the machine:"), copyLine(attachLine(answer.sessionId), "attach")),
    answer.jobId ? el("button", { type: "button", class: "link", onclick: () => openDetail(answer.jobId) }, "Job details") : null);
  box.hidden = false;
  $("spawn-submit").hidden = true;
  $("spawn-again").hidden = false;
  $("spawn-again").focus();
}

export function setupSpawn() {
  const form = $("spawn-form");
  form.addEventListener("submit", submit);
  $("machine-options").addEventListener("change", () => { $("browser").hidden = true; onMachine(); });
  for (const radio of form.querySelectorAll("input[name=sessionType]")) {
    radio.addEventListener("change", () => { onSessionType(); checkDirectory(0); });
  }
  setupFolders({ machine: pickedMachine, worktree: () => sessionType() === "worktree" });
  $("spawn-cancel").addEventListener("click", () => $("spawn-dialog").close());
  $("spawn-again").addEventListener("click", () => openSpawn(picked()));
  $("new-session").addEventListener("click", () => openSpawn(null));
}
