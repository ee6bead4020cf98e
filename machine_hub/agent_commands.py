"""`machine-hub agent`: the machine agent in the foreground, or as a daemon (start, stop, status, logs).

Every option is taken by `agent` itself and by each verb, so `agent start --namespace NS --home H`
is `agent --namespace NS --home H start`; an option given to the verb wins.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import uvloop

from core.errors import MachineHubError
from core.names import parse_labels
from core.settings import Settings
from machine_hub.options import namespace_option, settings_from_env, setup_logging


def _labels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    try:
        parse_labels(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


# The agent's options, taken by `agent` itself and by each of its verbs, so that
# `agent start --namespace NS` works as well as `agent --namespace NS start`.
AGENT_OPTIONS = (
    click.option("--namespace", callback=namespace_option, help="Namespace this machine joins.  [default: default]"),
    click.option("--machine-id", help="Machine id; without it one is made once and kept in --home."),
    click.option("--home", type=click.Path(file_okay=False), help="Agent state folder.  [default: ~/.machine-hub]"),
    click.option("--root", "roots", multiple=True, help="Only paths under this folder are visible (repeatable)."),
    click.option(
        "--label",
        "labels",
        multiple=True,
        callback=_labels,
        metavar="KEY=VALUE",
        help="A label placement can match this machine by (repeatable; also MACHINE_HUB_LABELS).",
    ),
    click.option(
        "--max-sessions",
        type=click.IntRange(min=0),
        help="Sessions this machine runs at once; a spawn beyond it fails (machine_full). 0: no limit.",
    ),
    click.option(
        "--exit-if-removed",
        is_flag=True,
        default=None,
        help="Exit with status 3 when Redis refuses this machine's credentials, instead of retrying.",
    ),
    click.option("--log-level", help="Log level.  [default: info]"),
)


def agent_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(AGENT_OPTIONS):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class AgentConfig:
    settings: Settings
    home: Path
    args: list[str]  # what `agent start` passes on to the agent it starts: the options given, nothing else
    log_level: str


def _agent_config(given: dict[str, Any], here: dict[str, Any] | None = None) -> AgentConfig:
    """The agent's settings from the options given to `agent` and, winning, to its verb."""
    options = {k: v for k, v in given.items() if v not in (None, ())}
    options |= {k: v for k, v in (here or {}).items() if v not in (None, ())}
    settings = settings_from_env(
        namespace=options.get("namespace"),
        machine_id=options.get("machine_id"),
        home=options.get("home"),
        roots=options.get("roots"),
        labels=options.get("labels"),
        max_sessions=options.get("max_sessions"),
        exit_if_removed=options.get("exit_if_removed"),
    )
    log_level = options.get("log_level", "info")
    args: list[str] = []
    for name in ("namespace", "machine_id", "max_sessions"):
        if name in options:
            args += [f"--{name.replace('_', '-')}", str(options[name])]
    args += [a for root in options.get("roots", ()) for a in ("--root", root)]
    args += [a for label in options.get("labels", ()) for a in ("--label", label)]
    args += ["--exit-if-removed"] if options.get("exit_if_removed") else []
    return AgentConfig(settings, Path(settings.home).expanduser(), [*args, "--log-level", log_level], log_level)


@click.group(invoke_without_command=True)
@agent_options
@click.pass_context
def agent(ctx: click.Context, /, **options: Any) -> None:
    """Run the machine agent in the foreground, or as a daemon: start, stop, status, logs.

    The options go before or after the verb: `agent start --namespace NS` is `agent --namespace NS start`.
    """
    ctx.obj = options
    if ctx.invoked_subcommand is not None:
        return
    from machine_agent.agent import Agent
    from machine_agent.home_lock import hold
    from machine_agent.identity import Running, machine_id as resolve_machine_id, write_running

    config = _agent_config(options)
    settings, home_dir = config.settings, config.home
    setup_logging(config.log_level)
    try:
        lock = hold(home_dir)
        mid = resolve_machine_id(home_dir, settings.machine_id)
        write_running(home_dir, Running(os.getpid(), mid, settings.namespace, settings.key_prefix))
        with lock, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            status = runner.run(Agent(settings, machine_id=mid, home=home_dir).run())
    except MachineHubError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


@agent.command("start")
@agent_options
@click.pass_obj
def agent_start(given: dict[str, Any], /, **options: Any) -> None:
    """Start the agent in the background (one per home); its log is <home>/agent.log."""
    from machine_hub import daemon

    config = _agent_config(given, options)
    daemon.start(config.home, config.args)


@agent.command("stop")
@agent_options
@click.pass_obj
def agent_stop(given: dict[str, Any], /, **options: Any) -> None:
    """Stop the background agent of this home (its sessions keep running)."""
    from machine_hub import daemon

    daemon.stop(_agent_config(given, options).home)


@agent.command("status")
@agent_options
@click.pass_obj
def agent_status(given: dict[str, Any], /, **options: Any) -> None:
    """Machine id, namespace, Redis reachability, heartbeat age and sessions; exit 1 when not live."""
    from machine_hub import daemon

    config = _agent_config(given, options)
    if not daemon.status(config.settings, config.home):
        sys.exit(1)


@agent.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@agent_options
@click.pass_obj
def agent_logs(given: dict[str, Any], /, follow: bool, **options: Any) -> None:
    """Print the background agent's log."""
    from machine_hub import daemon

    daemon.logs(_agent_config(given, options).home, follow)
