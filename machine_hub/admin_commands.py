"""`machine-hub machine add|remove|list|drain|undrain` and `machine-hub setup`: operator commands,
run with an admin REDIS_URL (a Redis user allowed to manage ACL users, e.g. `default` with its
password).

A new URL is printed alone on the last line of stdout (everything else goes to stderr), or
written to a 0600 file with `--write-url`, so a script can take it without parsing prose.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from core.admin import Admin, Credentials
from core.connections import REDIS_ERRORS, request_client
from core.errors import AdminError, MachineHubError
from core.notifications import NOTIFY_FLAGS
from core.settings import Settings

T = TypeVar("T")


def env_settings() -> Settings:
    """The settings from the environment, or the reason they are wrong as one CLI error line."""
    try:
        return Settings.from_env()
    except MachineHubError as exc:
        raise click.ClickException(str(exc)) from None


def run_admin(use: Callable[[Admin], Awaitable[T]], *, public_url: str = "") -> T:
    """Run `use` with an Admin on REDIS_URL; every failure is one readable line."""
    settings = env_settings()

    async def go() -> T:
        redis = request_client(settings)
        try:
            return await use(Admin(redis, settings, public_url=public_url))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise click.ClickException(f"cannot use Redis at REDIS_URL ({exc}); it must be an admin URL") from None


def _write_url(path: Path, url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


def _read_url(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _emit(credentials: Credentials, write_url: Path | None) -> None:
    if credentials.rotated:
        click.echo(f"{credentials.user}: new password; the old one no longer works", err=True)
    if write_url is not None:
        _write_url(write_url, credentials.url)
        click.echo(f"{credentials.user}: URL written to {write_url}", err=True)
    else:
        click.echo(credentials.url)


NS_OPTION = click.option("--namespace", required=True, help="The machine's namespace.")
PUBLIC_URL = click.option(
    "--public-url",
    default="",
    help="Scheme, host, port and database the printed URL should use (e.g. rediss://redis.example.com:6380/0); "
    "by default those of REDIS_URL.",
)
WRITE_URL = click.option(
    "--write-url", type=click.Path(dir_okay=False, path_type=Path), help="Write the URL to this file (0600)."
)


@click.group()
def machine() -> None:
    """Add, rotate and remove machines: each gets its own Redis user (needs an admin REDIS_URL)."""


KEEP_EXISTING = click.option(
    "--keep-existing", is_flag=True, help="With a URL file that still works: keep it (for start-up scripts)."
)


@machine.command("add")
@NS_OPTION
@click.option("--machine-id", default="", help="The machine's id; a new machine_<random> if not given.")
@PUBLIC_URL
@WRITE_URL
@KEEP_EXISTING
def machine_add(namespace: str, machine_id: str, public_url: str, write_url: Path | None, keep_existing: bool) -> None:
    """Register a machine and print its agent's Redis URL; again for an existing one rotates it."""
    if keep_existing and write_url is not None and run_admin(lambda admin: admin.still_works(_read_url(write_url))):
        click.echo(f"machine {machine_id or '(new)'}: kept the URL in {write_url}", err=True)
        return
    added_id, credentials = run_admin(lambda admin: admin.add_machine(namespace, machine_id), public_url=public_url)
    click.echo(f"machine {added_id} in namespace {namespace}; start its agent with this REDIS_URL:", err=True)
    _emit(credentials, write_url)


@machine.command("remove")
@NS_OPTION
@click.argument("machine_id")
def machine_remove(namespace: str, machine_id: str) -> None:
    """Delete the machine's Redis user (its connections end at once) and unregister it."""
    if not run_admin(lambda admin: admin.remove_machine(namespace, machine_id)):
        raise click.ClickException(f"no machine {machine_id!r} in namespace {namespace}")
    click.echo(f"removed machine {machine_id} from namespace {namespace}")


@machine.command("list")
@NS_OPTION
def machine_list(namespace: str) -> None:
    """The machines registered in NAMESPACE, with their Redis user and state."""
    entries = run_admin(lambda admin: admin.machines(namespace))
    if not entries:
        click.echo(f"no machines in namespace {namespace}")
    for entry in entries:
        user = entry.user if entry.has_user else f"{entry.user} (no Redis user: add it again)"
        state = f"{entry.state}, drained" if entry.drained else entry.state
        click.echo(f"{entry.machine_id}  {state:<7}  {user}")


@machine.command("drain")
@NS_OPTION
@click.argument("machine_id")
def machine_drain(namespace: str, machine_id: str) -> None:
    """Take no new spawns on the machine (they fail with machine_draining); its sessions, path checks,
    session lists and stops go on. Undo it with `machine undrain`."""
    changed = run_admin(lambda admin: admin.drain(namespace, machine_id, True))
    click.echo(f"machine {machine_id} {'drained' if changed else 'was drained already'}; it takes no new spawns")


@machine.command("undrain")
@NS_OPTION
@click.argument("machine_id")
def machine_undrain(namespace: str, machine_id: str) -> None:
    """Take spawns on the machine again."""
    changed = run_admin(lambda admin: admin.drain(namespace, machine_id, False))
    click.echo(f"machine {machine_id} {'undrained' if changed else 'was not drained'}; it takes new spawns")


@click.command()
@click.option("--role", "roles", multiple=True, type=click.Choice(["hub", "worker", "tokens"]), help="Default: all.")
@PUBLIC_URL
@click.option(
    "--write-urls",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each role's URL to <dir>/<role>/redis.url (0600) instead of printing them.",
)
@KEEP_EXISTING
def setup(roles: tuple[str, ...], public_url: str, write_urls: Path | None, keep_existing: bool) -> None:
    """Create the Redis users of hubs, workers and the token command, turn on the heartbeat
    notifications the worker listens to, and load the scripts machines may run."""

    async def go(admin: Admin) -> list[tuple[str, Credentials | None]]:
        await admin.configure_notifications(NOTIFY_FLAGS)
        await admin.save()
        await admin.scripts.load()
        out: list[tuple[str, Credentials | None]] = []
        for role in roles or ("hub", "worker", "tokens"):
            target = role_url_file(write_urls, role) if write_urls else None
            if keep_existing and target is not None and await admin.still_works(_read_url(target)):
                out.append((role, None))
                continue
            out.append((role, await admin.add_service(role)))
        return out

    for role, credentials in run_admin(go, public_url=public_url):
        if credentials is None:
            click.echo(f"{role}: kept the URL in {role_url_file(write_urls, role)}", err=True)
        elif write_urls is not None:
            _emit(credentials, role_url_file(write_urls, role))
        else:
            click.echo(f"{role}: {credentials.url}")


@click.command("sync-users")
def sync_users() -> None:
    """Give every Redis data node the machine-hub users most of them hold: run it when a node comes
    back after missing a `machine add` or `remove`, or joins later (Redis replicates no users)."""
    changes, saved = run_admin(lambda admin: admin.sync_users())
    for node in changes:
        if node.written or node.deleted:
            written, deleted = ", ".join(node.written) or "none", ", ".join(node.deleted) or "none"
            click.echo(f"{node.node}: wrote {written}; deleted {deleted}")
    if not any(node.written or node.deleted for node in changes):
        click.echo(f"no changes: every data node ({len(changes)}) holds the same users")
    if not saved:
        click.echo("warning: Redis runs without an ACL file: users are lost when it restarts", err=True)


def role_url_file(folder: Path | None, role: str) -> Path:
    """A folder per role, so each service can be given its own URL and no other (a volume each)."""
    assert folder is not None
    return folder / role / "redis.url"
