"""The `machine-hub` command: hub, agent, tokens and the one-command dev stack.

This package is the composition root: it is the only place that imports api and machine_agent
together, and the only place that reads the environment (Settings.from_env).
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from core.connections import REDIS_ERRORS, request_client
from core.keys import Keys
from core.tokens import TokenStore
from machine_hub.options import namespace_option, settings_from_env, setup_logging

T = TypeVar("T")


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

    settings = settings_from_env(host=host, port=port)
    setup_logging(log_level)
    run(settings, log_level)


@main.command()
@click.option("--check", is_flag=True, help="Exit 0 if some worker is alive (a container health check).")
@click.option("--log-level", default="info", show_default=True)
def worker(check: bool, log_level: str) -> None:
    """Run the background worker (arq): offline sweeps, job expiry and history trimming."""
    from worker.main import check as alive, run

    settings = settings_from_env()
    if check:
        sys.exit(alive(settings))
    setup_logging(log_level)
    run(settings)


@main.group()
def token() -> None:
    """Issue, list and revoke bearer tokens (Redis keeps only their SHA-256)."""


def _with_tokens(use: Callable[[TokenStore], Awaitable[T]]) -> T:
    async def go() -> T:
        settings = settings_from_env()
        redis = request_client(settings)
        try:
            return await use(TokenStore(redis, Keys(settings.key_prefix)))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except REDIS_ERRORS as exc:
        raise click.ClickException(f"cannot reach Redis ({exc}); check REDIS_URL") from None


NS_OPTION = click.option(
    "--namespace", required=True, callback=namespace_option, help="The namespace the token grants."
)


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

    run_dev(settings_from_env(), port=port, data=Path(data))


def _register_commands() -> None:
    from machine_hub.actions import paths, spawn
    from machine_hub.admin_commands import machine, setup, sync_users
    from machine_hub.agent_commands import agent
    from machine_hub.redis_init import redis_init
    from machine_hub.terminal import jobs, machines
    from machine_hub.tls_certs import tls_certs
    from machine_hub.webhook_commands import webhook

    main.add_command(agent)
    main.add_command(machines)
    main.add_command(jobs)
    main.add_command(spawn)
    main.add_command(paths)
    main.add_command(machine)
    main.add_command(setup)
    main.add_command(sync_users)
    main.add_command(tls_certs)
    main.add_command(redis_init)
    main.add_command(webhook)


_register_commands()
