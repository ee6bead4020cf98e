"""The `machine-hub` command: hub, agent, tokens and the one-command dev stack.

This package is the composition root: it is the only place that imports api and machine_agent
together, and the only place that reads the environment (Settings.from_env).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import uvloop
from redis.exceptions import RedisError

from core.connections import request_client
from core.errors import MachineHubError
from core.keys import Keys
from core.names import valid_namespace
from core.settings import Settings
from core.tokens import TokenStore

T = TypeVar("T")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(overrides=overrides)
    except MachineHubError as exc:
        raise click.ClickException(str(exc)) from None


def _namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not valid_namespace(value):
        raise click.BadParameter("must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    return value


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="machine-hub")
def main() -> None:
    """Start AI coding sessions on any of your machines through one HTTP API."""


@main.command()
@click.option("--host", default=None, help="Interface to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port to listen on.  [default: 3006]")
@click.option("--log-level", default="info", show_default=True)
def api(host: str | None, port: int | None, log_level: str) -> None:
    """Run the hub (HTTP API). Configure with REDIS_URL and CLI_API_TOKEN."""
    from api.server import run

    settings = _settings(host=host, port=port)
    _logging(log_level)
    run(settings, log_level)


@main.group(invoke_without_command=True)
@click.option("--namespace", callback=_namespace, help="Namespace this machine joins.  [default: default]")
@click.option("--machine-id", help="Machine id; without it one is made once and kept in --home.")
@click.option("--home", type=click.Path(file_okay=False), help="Agent state folder.  [default: ~/.machine-hub]")
@click.option("--root", "roots", multiple=True, help="Only paths under this folder are visible (repeatable).")
@click.option("--log-level", default="info", show_default=True)
@click.pass_context
def agent(
    ctx: click.Context,
    namespace: str | None,
    machine_id: str | None,
    home: str | None,
    roots: tuple[str, ...],
    log_level: str,
) -> None:
    """Run the machine agent in the foreground, or as a daemon: start, stop, status, logs."""
    settings = _settings(namespace=namespace, machine_id=machine_id, home=home, roots=roots or None)
    home_dir = Path(settings.home).expanduser()
    # What `agent start` passes on to the agent it starts (the options given here, nothing else).
    passed = [*(["--namespace", namespace] if namespace else []), *(["--machine-id", machine_id] if machine_id else [])]
    passed += [arg for root in roots for arg in ("--root", root)] + ["--log-level", log_level]
    ctx.obj = (settings, home_dir, passed)
    if ctx.invoked_subcommand is not None:
        return
    from machine_agent.agent import Agent
    from machine_agent.home_lock import hold
    from machine_agent.identity import machine_id as resolve_machine_id

    _logging(log_level)
    try:
        lock = hold(home_dir)
        mid = resolve_machine_id(home_dir, settings.machine_id)
        with lock, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(Agent(settings, machine_id=mid, home=home_dir).run())
    except MachineHubError as exc:
        raise click.ClickException(str(exc)) from None


@agent.command("start")
@click.pass_obj
def agent_start(obj: tuple[Settings, Path, list[str]]) -> None:
    """Start the agent in the background (one per home); its log is <home>/agent.log."""
    from machine_hub import daemon

    daemon.start(obj[1], obj[2])


@agent.command("stop")
@click.pass_obj
def agent_stop(obj: tuple[Settings, Path, list[str]]) -> None:
    """Stop the background agent of this home (its sessions keep running)."""
    from machine_hub import daemon

    daemon.stop(obj[1])


@agent.command("status")
@click.pass_obj
def agent_status(obj: tuple[Settings, Path, list[str]]) -> None:
    """Machine id, namespace, Redis reachability, heartbeat age and sessions; exit 1 when not live."""
    from machine_hub import daemon

    if not daemon.status(obj[0], obj[1]):
        sys.exit(1)


@agent.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.pass_obj
def agent_logs(obj: tuple[Settings, Path, list[str]], follow: bool) -> None:
    """Print the background agent's log."""
    from machine_hub import daemon

    daemon.logs(obj[1], follow)


@main.command()
@click.option("--check", is_flag=True, help="Exit 0 if some worker is alive (a container health check).")
@click.option("--log-level", default="info", show_default=True)
def worker(check: bool, log_level: str) -> None:
    """Run the background worker (arq): offline sweeps, job expiry and history trimming."""
    from worker.main import check as alive, run

    settings = _settings()
    if check:
        sys.exit(alive(settings))
    _logging(log_level)
    run(settings)


@main.group()
def token() -> None:
    """Issue, list and revoke bearer tokens (Redis keeps only their SHA-256)."""


def _with_tokens(use: Callable[[TokenStore], Awaitable[T]]) -> T:
    async def go() -> T:
        settings = _settings()
        redis = request_client(settings)
        try:
            return await use(TokenStore(redis, Keys(settings.key_prefix)))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except RedisError as exc:
        raise click.ClickException(f"cannot reach Redis ({exc}); check REDIS_URL") from None


NS_OPTION = click.option("--namespace", required=True, callback=_namespace, help="The namespace the token grants.")


@token.command("create")
@NS_OPTION
def token_create(namespace: str) -> None:
    """Print a new token for NAMESPACE; it is shown only this once."""
    new = _with_tokens(lambda store: store.create(namespace))
    click.echo(new.token)
    click.echo(f"id {new.record.id}, namespace {namespace}; store it now, it cannot be shown again", err=True)


@token.command("list")
@NS_OPTION
def token_list(namespace: str) -> None:
    """List the issued tokens of NAMESPACE (ids only)."""
    records = _with_tokens(lambda store: store.issued(namespace))
    if not records:
        click.echo(f"no issued tokens in namespace {namespace}")
    for record in records:
        created = datetime.datetime.fromtimestamp(record.created_ms / 1000, datetime.UTC)
        click.echo(f"{record.id}  {record.namespace}  created {created:%Y-%m-%d %H:%M:%S} UTC")


@token.command("revoke")
@NS_OPTION
@click.argument("token_id")
def token_revoke(namespace: str, token_id: str) -> None:
    """Revoke a token by the id `token list` shows (or by the token itself)."""
    if not _with_tokens(lambda store: store.revoke(namespace, token_id)):
        raise click.ClickException(f"no token {token_id!r} in namespace {namespace}")
    click.echo(f"revoked {token_id}")


@main.command()
@click.option("--port", type=int, default=3006, show_default=True, help="Port of the hub.")
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=".machine-hub",
    show_default=True,
    help="Folder for the Redis data this command may start.",
)
def dev(port: int, data: str) -> None:
    """Redis, the hub and a local agent in one command, with a token and a curl line to try."""
    from machine_hub.devstack import run_dev

    run_dev(_settings(), port=port, data=Path(data))


def _register_terminal_commands() -> None:
    from machine_hub.terminal import jobs, machines

    main.add_command(machines)
    main.add_command(jobs)


_register_terminal_commands()
