"""What every command shares: settings read once from the environment, option checks, logging."""

from __future__ import annotations

import logging

import click

from core.errors import MachineHubError
from core.names import valid_namespace
from core.settings import Settings


def settings_from_env(**overrides: object) -> Settings:
    """Settings.from_env with command-line overrides; a bad value is one readable line."""
    try:
        return Settings.from_env(overrides=overrides)
    except MachineHubError as exc:
        raise click.ClickException(str(exc)) from None


def namespace_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not valid_namespace(value):
        raise click.BadParameter("must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    return value


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
