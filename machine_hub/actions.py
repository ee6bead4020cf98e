"""`machine-hub spawn` and `machine-hub paths`: start a session and check paths from a terminal.

They talk HTTP to a hub like `machines` and `jobs` (machine_hub.hub_client): readable output on
stdout and exit status 0 on success; one line on stderr and exit status 1 on any failure, a
spawn that the hub answered with `success: false` included. `--any`, `--label`,
`--wait-for-machine` and `paths` without `--machine` use routes of the hub's placement API
(POST /api/spawn, POST /api/paths/exists, `waitForMachineS`); a hub without them gets a message
saying so.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import click

from core.names import parse_labels
from machine_hub.hub_client import HubClient, HubError, RouteMissing, resolve_token
from machine_hub.tables import render_table
from machine_hub.terminal import hub_options

AGENTS = ("claude", "codex", "cursor", "gemini", "opencode")
SPAWN_HTTP_TIMEOUT_S = 120.0  # a spawn is answered within the hub's spawn deadline (30 s by default)
PATHS_HTTP_TIMEOUT_S = 60.0
POLL_S = 1.0
QUEUED_GRACE_S = 120.0  # after --wait-for-machine, how long a started job may take to settle
FINAL = ("succeeded", "failed", "expired")


def _labels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_labels(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _unsupported(what: str, route: str, instead: str) -> HubError:
    return HubError(f"this hub does not support {what} ({route}); {instead}")


def _failure(answer: Mapping[str, Any], what: str) -> str:
    code = answer.get("code")
    error = answer.get("error") or "no reason given"
    line = f"{what} failed ({code}): {error}" if code else f"{what} failed: {error}"
    candidates = answer.get("candidates")
    if isinstance(candidates, list) and candidates:
        reasons = [f"{c.get('machineId', '?')}: {c.get('reason', '?')}" for c in candidates if isinstance(c, dict)]
        line += f" [{'; '.join(reasons)}]"
    if answer.get("jobId"):
        line += f" (job {answer['jobId']})"
    return line


def _started(answer: Mapping[str, Any], machine_id: str | None, directory: str) -> str:
    where = answer.get("machineId") or machine_id or "?"
    lines = [f"session {answer.get('sessionId', '?')} started on {where}"]
    worktree = answer.get("worktree")
    if isinstance(worktree, dict):
        lines.append(f"  worktree   {worktree.get('path', '?')} (branch {worktree.get('branch', '?')})")
    else:
        created = " (created)" if answer.get("directoryCreated") else ""
        lines.append(f"  directory  {directory}{created}")
    if answer.get("jobId"):
        lines.append(f"  job        {answer['jobId']}")
    return "\n".join(lines)


def _await_job(client: HubClient, job_id: str, wait_s: int, sleep: Callable[[float], None]) -> dict[str, Any]:
    """Poll a queued spawn's job until it is final; its result, with the machine it ran on."""
    deadline = time.monotonic() + wait_s + QUEUED_GRACE_S
    quoted = urllib.parse.quote(job_id, safe="")
    while True:
        job = client.get(f"/api/jobs/{quoted}")
        state = job.get("state")
        result = job.get("result")
        result = result if isinstance(result, dict) else {}
        if state in FINAL or (state == "unknown" and result):
            if state == "expired":
                return {"success": False, "code": "not_started", "error": "no machine took the job in time"}
            return {**result, "jobId": job_id, "machineId": job.get("machineId")}
        if time.monotonic() > deadline:
            raise HubError(f"job {job_id} is still {state}; follow it with `machine-hub jobs --watch`")
        sleep(POLL_S)


@click.command("spawn")
@click.option("--machine", "machine_id", metavar="ID", help="Start it on this machine.")
@click.option("--any", "any_machine", is_flag=True, help="Let the hub pick a machine that fits.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_labels,
    metavar="K=V",
    help="With --any: a label it must have (repeatable).",
)
@click.option("--dir", "directory", required=True, metavar="PATH", help="Where the session runs on the machine.")
@click.option("--agent", type=click.Choice(AGENTS), default="claude", show_default=True, help="The AI CLI to start.")
@click.option("--model", help="The CLI's model.")
@click.option("--worktree", metavar="NAME", help="Run in a new git worktree of this name beside the repository.")
@click.option("--prompt", metavar="TEXT", help="The CLI's first message.")
@click.option("--yolo", is_flag=True, help="The CLI's skip-permissions flag.")
@click.option(
    "--wait-for-machine",
    "wait_s",
    type=click.IntRange(1, 86_400),
    metavar="S",
    help="Wait up to S seconds for the machine (or a machine that fits) to come online.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the hub's answer as JSON.")
@hub_options
def spawn(
    machine_id: str | None,
    any_machine: bool,
    labels: dict[str, str],
    directory: str,
    agent: str,
    model: str | None,
    worktree: str | None,
    prompt: str | None,
    yolo: bool,
    wait_s: int | None,
    as_json: bool,
    url: str,
    token: str | None,
) -> None:
    """Start an AI coding session on a machine: --machine ID, or --any for the hub to pick one."""
    if bool(machine_id) == any_machine:
        raise click.UsageError("pass --machine ID or --any (one of them)")
    if labels and not any_machine:
        raise click.UsageError("--label goes with --any (a named machine is not matched by labels)")
    body: dict[str, Any] = {"directory": directory, "agent": agent, "yolo": yolo}
    body |= {k: v for k, v in (("model", model), ("prompt", prompt)) if v is not None}
    if worktree is not None:
        body |= {"sessionType": "worktree", "worktreeName": worktree}
    if wait_s is not None:
        body["waitForMachineS"] = wait_s
    client = HubClient(url, resolve_token(token), timeout_s=SPAWN_HTTP_TIMEOUT_S)
    if machine_id:
        status, answer = client.post(f"/api/machines/{urllib.parse.quote(machine_id, safe='')}/spawn", body)
        if wait_s is not None and status == 200 and answer.get("code") == "machine_offline":
            raise _unsupported("--wait-for-machine", "waitForMachineS", "it answered machine_offline at once")
    else:
        if labels:
            body["placement"] = {"labels": labels}
        try:
            status, answer = client.post("/api/spawn", body)
        except RouteMissing:
            raise _unsupported("--any", "POST /api/spawn", "name a machine with --machine ID") from None
    if status == 202:
        click.echo(f"queued as job {answer.get('jobId')}: waiting up to {wait_s} s for a machine", err=True)
        answer = _await_job(client, str(answer.get("jobId")), wait_s or 0, time.sleep)
    if as_json:
        click.echo(json.dumps(answer))
    if answer.get("success") is not True:
        raise HubError(_failure(answer, "spawn"))
    if not as_json:
        click.echo(_started(answer, machine_id, directory))


@click.command("paths")
@click.option("--machine", "machine_id", metavar="ID", help="Check on this machine; without it, on every online one.")
@click.option("--json", "as_json", is_flag=True, help="Print the hub's answer as JSON.")
@click.argument("paths", nargs=-1, required=True)
@hub_options
def paths(machine_id: str | None, as_json: bool, paths: tuple[str, ...], url: str, token: str | None) -> None:
    """Which of PATHS exist on a machine (`~` is the agent user's home)."""
    client = HubClient(url, resolve_token(token), timeout_s=PATHS_HTTP_TIMEOUT_S)
    body = {"paths": list(paths)}
    try:
        if machine_id:
            _, answer = client.post(f"/api/machines/{urllib.parse.quote(machine_id, safe='')}/paths/exists", body)
        else:
            _, answer = client.post("/api/paths/exists", body)
    except RouteMissing:
        if machine_id:
            raise
        raise _unsupported("checking paths on every machine", "POST /api/paths/exists", "pass --machine ID") from None
    except HubError as exc:
        if exc.status == 500 and exc.body.get("error"):  # the check itself failed: say why, with its code
            raise HubError(f"{exc.body['error']} ({exc.body.get('code', 'no code')})") from None
        raise
    if as_json:
        click.echo(json.dumps(answer))
        return
    unanswered: dict[str, Any] = {}
    if machine_id:
        found = {machine_id: answer.get("exists") or {}}
    else:
        found = {m: e for m, e in sorted((answer.get("machines") or {}).items()) if isinstance(e, dict)}
        unanswered = answer.get("unanswered") or {}
        if not found and not unanswered:
            click.echo("no machines online")
            return
    trimmed = list(dict.fromkeys(p.strip() for p in paths))  # as the hub keys them
    rows = [[m, p, "yes" if exists.get(p) else "no"] for m, exists in found.items() for p in trimmed]
    rows += [[m, p, f"no answer ({code})"] for m, code in sorted(unanswered.items()) for p in trimmed]
    click.echo(render_table(("MACHINE", "PATH", "EXISTS"), rows))
