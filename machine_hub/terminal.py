"""`machine-hub machines` and `machine-hub jobs`: the dashboard's lists in a terminal.

They talk HTTP to a hub (stdlib urllib only, so they need nothing the hub does not), print
aligned tables, and `jobs --watch` follows the hub's event stream (/api/events, server-sent
events) and prints the table again whenever something changes. Every failure is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import http.client
import sys
import time
from collections.abc import Callable
from typing import IO

import click

from machine_hub.hub_client import Event, HubClient, HubError, resolve_token
from machine_hub.tables import jobs_table, machines_table, short_job_id

DEFAULT_URL = "http://127.0.0.1:3006"
JOB_STATES = ("queued", "running", "succeeded", "failed", "expired", "unknown")
JOB_KINDS = ("spawn", "paths", "sessions", "stop", "directory")


def hub_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option(
        "--token",
        envvar="MACHINE_HUB_TOKEN",
        show_envvar=True,
        help="Bearer token (falls back to CLI_API_TOKEN).",
    )(fn)
    fn = click.option(
        "--url",
        envvar="MACHINE_HUB_URL",
        show_envvar=True,
        default=DEFAULT_URL,
        show_default=True,
        help="The hub's base URL.",
    )(fn)
    return fn


@click.command("machines")
@click.option("--all", "show_all", is_flag=True, help="Also list machines that are offline.")
@hub_options
def machines(show_all: bool, url: str, token: str | None) -> None:
    """List the machines of your namespace: state, platform, version, last seen, queue."""
    client = HubClient(url, resolve_token(token))
    listed = client.get("/api/machines", {"include": "offline"}).get("machines")
    if not isinstance(listed, list):
        raise HubError(f"{client.url}/api/machines answered without a machines list; check --url")
    rows = [m for m in listed if isinstance(m, dict) and (show_all or m.get("online", True))]
    if not rows:
        click.echo("no machines" if show_all else "no machines online (--all lists offline ones too)")
        return
    click.echo(machines_table(rows))


@click.command("jobs")
@click.option("--machine", "machine_id", help="Only jobs of this machine id.")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(JOB_KINDS), help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many jobs.")
@click.option("--watch", is_flag=True, help="Follow the hub's events and print the list again on every change.")
@hub_options
def jobs(
    machine_id: str | None,
    state: str | None,
    kind: str | None,
    limit: int,
    watch: bool,
    url: str,
    token: str | None,
) -> None:
    """List recent jobs, newest first: kind, machine, state, age, latency, error."""
    client = HubClient(url, resolve_token(token))
    params = {"machineId": machine_id, "state": state, "kind": kind, "limit": limit}

    def show() -> None:
        listed = client.get("/api/jobs", params).get("jobs")
        if not isinstance(listed, list):
            raise HubError(f"{client.url}/api/jobs answered without a jobs list; check --url")
        click.echo(jobs_table([j for j in listed if isinstance(j, dict)]) if listed else "no jobs")

    if not watch:
        show()
        return
    try:
        follow(client, show, sys.stdout)
    except KeyboardInterrupt:
        pass


def follow(
    client: HubClient,
    show: Callable[[], None],
    out: IO[str],
    *,
    max_reconnects: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the list, then again after every job or machine event; reconnect with Last-Event-ID."""
    clear = out.isatty()
    last_id: str | None = None
    failures = 0

    def redraw(note: str) -> None:
        if clear:
            out.write("\x1b[H\x1b[2J")
        else:
            out.write("\n")
        out.write(f"{time.strftime('%H:%M:%S')}  {note}  (Ctrl-C to stop)\n")
        out.flush()
        show()

    redraw(f"watching {client.url}")
    while True:
        try:
            for event in client.events(last_id):
                failures = 0
                if event.id:
                    last_id = event.id
                if event.event in ("job", "machine"):
                    redraw(_describe(event))
        except HubError as exc:
            # A refused token or a wrong URL will not heal by waiting; a dropped link might.
            if "refused the token" in exc.message or "has no" in exc.message or "not an event stream" in exc.message:
                raise
            failures += 1
            click.echo(f"{exc.message}; reconnecting", err=True)
        except (OSError, http.client.HTTPException):
            failures += 1
            click.echo(f"lost the event stream of {client.url}; reconnecting", err=True)
        if max_reconnects is not None and failures > max_reconnects:
            raise HubError(f"gave up following {client.url}/api/events after {failures} failed attempts")
        sleep(min(5.0, 0.5 * 2 ** min(failures, 4)))


def _describe(event: Event) -> str:
    data = event.json()
    if event.event == "job":
        code = f" ({data['code']})" if data.get("code") else ""
        job = short_job_id(str(data.get("jobId", "?")))
        return f"job {job} {data.get('kind', '?')} on {data.get('machineId', '?')}: {data.get('state', '?')}{code}"
    return f"machine {data.get('machineId', '?')}: {data.get('state', '?')}"
