"""`machine-hub webhook add|list|remove`: a namespace's webhooks from the command line.

They work on Redis directly, like `machine` and `token`, with a REDIS_URL allowed to write the
namespace's webhooks: an admin URL, or the hubs' (`setup` makes it). `add` prints the new
webhook's signing secret alone on stdout, shown only this once; everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from core.connections import REDIS_ERRORS, request_client
from core.destinations import UnfitURL, check_url
from core.errors import TooManyWebhooks
from core.keys import Keys
from core.lua import Scripts
from core.names import valid_namespace
from core.settings import Settings
from core.webhooks import EVENT_NAMES, EventName, WebhookStore
from machine_hub.admin_commands import env_settings

T = TypeVar("T")


def _with_store(settings: Settings, use: Callable[[WebhookStore], Awaitable[T]]) -> T:
    async def go() -> T:
        redis = request_client(settings)
        try:
            return await use(WebhookStore(redis, Keys(settings.key_prefix), Scripts(redis, can_load=True)))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except TooManyWebhooks as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise click.ClickException(
            f"cannot use Redis at REDIS_URL ({exc}); it must be an admin URL or the hubs'"
        ) from None


def _namespace(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not valid_namespace(value):
        raise click.BadParameter("must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    return value


NS_OPTION = click.option("--namespace", required=True, callback=_namespace, help="The webhook's namespace.")


@click.group()
def webhook() -> None:
    """Add, list and remove a namespace's webhooks (REDIS_URL: an admin URL or the hubs')."""


@webhook.command("add")
@NS_OPTION
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(EVENT_NAMES),
    help="An event to deliver (repeatable).  [default: all of them]",
)
@click.argument("url")
def webhook_add(namespace: str, events: tuple[EventName, ...], url: str) -> None:
    """POST the chosen events of NAMESPACE to URL, signed; prints the signing secret once."""
    settings = env_settings()
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except UnfitURL as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    chosen = list(events or EVENT_NAMES)
    limit = settings.max_webhooks_per_namespace
    record = _with_store(settings, lambda store: store.create(namespace, url, chosen, limit=limit))
    click.echo(record.secret)
    click.echo(
        f"webhook {record.id} in namespace {namespace}: {', '.join(record.events)} to {record.url}; "
        "store the secret now, it cannot be shown again",
        err=True,
    )


@webhook.command("list")
@NS_OPTION
def webhook_list(namespace: str) -> None:
    """The webhooks of NAMESPACE (never their secrets)."""
    records = _with_store(env_settings(), lambda store: store.all(namespace))
    if not records:
        click.echo(f"no webhooks in namespace {namespace}")
    for record in records:
        created = datetime.datetime.fromtimestamp(record.created_ms / 1000, datetime.UTC)
        click.echo(f"{record.id}  created {created:%Y-%m-%d %H:%M:%S} UTC  {','.join(record.events)}  {record.url}")


@webhook.command("remove")
@NS_OPTION
@click.argument("webhook_id")
def webhook_remove(namespace: str, webhook_id: str) -> None:
    """Remove a webhook by the id `webhook list` shows; what is still queued for it is dropped."""
    if not _with_store(env_settings(), lambda store: store.remove(namespace, webhook_id)):
        raise click.ClickException(f"no webhook {webhook_id!r} in namespace {namespace}")
    click.echo(f"removed {webhook_id}")
