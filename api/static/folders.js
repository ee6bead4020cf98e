// The folder field of the New session dialog: the picked machine's recent folders as suggestions,
// a live (debounced) existence check, and a browser of its sub-folders. Each goes through the
// machine's queue (recent-directories, paths/exists, directory), so the roots it keeps apply.

import { $, ApiError, api, describe, el, handleError, machinePath } from "./common.js";

const CHECK_MS = 350;

const folders = {
  recent: [], // existing recent folders of the picked machine
  checkSeq: 0,
  checkTimer: null,
  browsePath: null,
  machine: () => null, // the picked machine; null for "any suitable machine" or none
  worktree: () => false, // a worktree session needs an existing folder
};

function pickedId() {
  const machine = folders.machine();
  return machine ? machine.id : null;
}

export function clearRecent() {
  folders.recent = [];
  renderSuggestions();
}

export async function loadRecent(machineId) {
  $("suggestions-state").textContent = "Loading recent folders…";
  renderSuggestions();
  try {
    const body = await api(machinePath(machineId, "/recent-directories"));
    const paths = (body.directories || []).map((d) => d.path);
    let existing = paths;
    if (paths.length) {
      const checked = await api(machinePath(machineId, "/paths/exists"), { method: "POST", body: { paths } });
      existing = paths.filter((p) => checked.exists[p]);
    }
    if (pickedId() !== machineId) return;
    folders.recent = existing;
    $("suggestions-state").textContent = existing.length ? "" : "No recent folders on this machine.";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { handleError(err, "Recent folders"); return; }
    if (pickedId() !== machineId) return;
    $("suggestions-state").textContent = `Recent folders: ${describe(err)}`;
  }
  renderSuggestions();
}

export function renderSuggestions() {
  const typed = $("spawn-directory").value.trim().toLowerCase();
  const shown = folders.recent.filter((p) => !typed || (p.toLowerCase().includes(typed) && p.toLowerCase() !== typed));
  $("suggestions").replaceChildren(...shown.map((p) => el("li", {},
    el("button", { type: "button", class: "suggestion mono", onclick: () => setDirectory(p) }, p))));
  $("suggestions-box").hidden = !shown.length && !$("suggestions-state").textContent;
}

function setDirectory(path) {
  $("spawn-directory").value = path;
  renderSuggestions();
  checkDirectory(0);
  $("spawn-directory").focus();
}

export function checkDirectory(delay = CHECK_MS) {
  clearTimeout(folders.checkTimer);
  const seq = ++folders.checkSeq;
  const machine = folders.machine();
  const path = $("spawn-directory").value.trim();
  const status = $("directory-status");
  status.dataset.state = "";
  if (!machine || !path) { status.textContent = ""; return; }
  status.dataset.state = "checking";
  status.textContent = "Checking…";
  folders.checkTimer = setTimeout(async () => {
    try {
      const body = await api(machinePath(machine.id, "/paths/exists"), { method: "POST", body: { paths: [path] } });
      if (seq !== folders.checkSeq) return;
      const exists = body.exists[path];
      const worktree = folders.worktree();
      status.dataset.state = exists ? "exists" : worktree ? "missing" : "create";
      status.textContent = exists ? "The folder exists."
        : worktree ? "The folder does not exist: a worktree session needs an existing git repository."
          : "The folder does not exist yet: it will be created when the session starts.";
    } catch (err) {
      if (seq !== folders.checkSeq) return;
      status.dataset.state = "error";
      status.textContent = `Could not check the folder: ${describe(err)}`;
    }
  }, delay);
}

async function browse(path) {
  const machine = folders.machine();
  if (!machine) return;
  const box = $("browser");
  box.hidden = false;
  box.setAttribute("aria-busy", "true");
  $("browser-state").textContent = `Listing ${path}…`;
  $("browser-state").className = "muted loading";
  try {
    const listing = await api(machinePath(machine.id, "/directory"), { method: "POST", body: { path, hidden: $("browser-hidden").checked } });
    folders.browsePath = listing.path;
    $("browser-path").textContent = listing.path;
    $("browser-up").disabled = listing.path === "/";
    $("browser-use").disabled = false;
    $("browser-list").replaceChildren(...listing.entries.map((e) => el("li", {},
      el("button", { type: "button", class: "folder mono", onclick: () => browse(e.path) }, `${e.name}/`, e.symlink ? " ↪" : ""))));
    $("browser-state").textContent = listing.entries.length
      ? listing.truncated ? "More than 1000 folders: only the first 1000 are shown." : ""
      : "No sub-folders here.";
    $("browser-state").className = "muted";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { handleError(err, "Folders"); return; }
    $("browser-state").textContent = `Cannot list ${path}: ${describe(err)}`;
    $("browser-state").className = "error";
  } finally {
    box.setAttribute("aria-busy", "false");
  }
}

function parent(path) {
  const trimmed = path.replace(/\/+$/, "");
  const cut = trimmed.lastIndexOf("/");
  return cut <= 0 ? "/" : trimmed.slice(0, cut);
}

export function setupFolders({ machine, worktree }) {
  folders.machine = machine;
  folders.worktree = worktree;
  $("spawn-directory").addEventListener("input", () => { renderSuggestions(); checkDirectory(); });
  $("browse").addEventListener("click", () => {
    const typed = $("spawn-directory").value.trim();
    const status = $("directory-status").dataset.state;
    browse(typed && status === "exists" ? typed : typed && status !== "checking" ? parent(typed) : "~");
  });
  $("browser-up").addEventListener("click", () => browse(parent(folders.browsePath || "/")));
  $("browser-home").addEventListener("click", () => browse("~"));
  $("browser-hidden").addEventListener("change", () => browse(folders.browsePath || "~"));
  $("browser-use").addEventListener("click", () => {
    $("browser").hidden = true;
    setDirectory(folders.browsePath);
  });
}
