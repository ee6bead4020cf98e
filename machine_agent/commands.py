"""The argv that starts each supported AI coding CLI, and where its executable lives.

Commands are always argv lists handed to exec, never shell strings, so directories, models and
overrides cannot inject shell syntax.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping

from core.schemas import AgentName

DEFAULT_COMMANDS: Mapping[AgentName, tuple[str, ...]] = {
    "claude": ("claude",),
    "codex": ("codex",),
    "cursor": ("cursor-agent",),
    "gemini": ("gemini",),
    "opencode": ("opencode",),
}

# opencode has no flag that skips its permission prompts, so yolo adds nothing there.
YOLO_FLAGS: Mapping[AgentName, tuple[str, ...]] = {
    "claude": ("--dangerously-skip-permissions",),
    "codex": ("--dangerously-bypass-approvals-and-sandbox",),
    "cursor": ("--force",),
    "gemini": ("--yolo",),
    "opencode": (),
}


# How each CLI takes a first message in interactive mode. The `--` or `--opt=value` forms keep a
# prompt that starts with "-" from being read as an option.
PROMPT_ARGS: Mapping[AgentName, Callable[[str], list[str]]] = {
    "claude": lambda p: ["--", p],
    "codex": lambda p: ["--", p],
    "cursor": lambda p: ["--", p],
    "gemini": lambda p: [f"--prompt-interactive={p}"],
    "opencode": lambda p: [f"--prompt={p}"],
}


def base_command(agent: AgentName, overrides: Mapping[str, list[str]]) -> list[str]:
    """The command words before any flag: the override for `agent` if set, else the default.

    An empty override list is ignored, since it could not start anything.
    """
    override = overrides.get(agent)
    if override:
        return list(override)
    return list(DEFAULT_COMMANDS[agent])


def build_argv(
    agent: AgentName,
    *,
    yolo: bool,
    model: str | None,
    session_id: str,
    overrides: Mapping[str, list[str]],
    prompt: str | None = None,
) -> list[str]:
    """The full argv of a session of `agent`; `prompt` becomes its first message."""
    argv = base_command(agent, overrides)
    if yolo:
        argv.extend(YOLO_FLAGS[agent])
    if agent == "claude":
        # Claude accepts the id we chose, so the session can be found again by the hub's id.
        argv.extend(["--session-id", session_id])
    if model and model.strip():
        argv.extend(["--model", model.strip()])
    if prompt:
        argv.extend(PROMPT_ARGS[agent](prompt))
    return argv


def resolve_executable(command: str, env: Mapping[str, str]) -> str | None:
    """Absolute path of `command` as exec would find it with `env`'s PATH, or None if missing.

    A command containing a slash is checked as a path, as exec does.
    """
    path = env.get("PATH", os.defpath)
    found = shutil.which(command, path=path)
    return os.path.abspath(found) if found else None
