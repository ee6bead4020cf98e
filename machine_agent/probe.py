"""Which AI coding CLIs this machine has, and their versions: each asked `--version`.

The agent looks at start and every `cli_probe_interval_s`, with the same command resolution as a
spawn (machine_agent.commands, MACHINE_HUB_AGENT_COMMANDS included), in the environment sessions
get (none of the agent's credentials), each CLI in its own process group with a short deadline.
A CLI that is found but does not answer in time, or fails, is listed with version None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Mapping

from core.machine_schemas import Agents
from machine_agent.commands import DEFAULT_COMMANDS, base_command, resolve_executable

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0
MAX_VERSION = 64
VERSION_RE = re.compile(r"\bv?(\d+(?:\.\d+)+(?:[-+][0-9A-Za-z.]+)*)")


def parse_version(output: bytes) -> str | None:
    """The first version-looking word of a `--version` answer, else its first line (cut short)."""
    text = output.decode(errors="replace")
    match = VERSION_RE.search(text)
    if match:
        return match.group(1)[:MAX_VERSION]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:MAX_VERSION] or None


async def probe(overrides: Mapping[str, list[str]], env: Mapping[str, str], cwd: str) -> Agents:
    """Every supported CLI whose executable is found, with its version; all asked at once."""
    found: dict[str, list[str]] = {}
    for agent in DEFAULT_COMMANDS:
        command = base_command(agent, overrides)
        executable = resolve_executable(command[0], env)
        if executable is not None:
            found[agent] = [executable, *command[1:], "--version"]
    versions = await asyncio.gather(*(_version(argv, env, cwd) for argv in found.values()))
    return dict(zip(found, versions, strict=True))


async def _version(argv: list[str], env: Mapping[str, str], cwd: str) -> str | None:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:  # also a working directory that is gone
        log.info("%s --version could not start: %s", argv[0], exc)
        return None
    output: bytes | None = None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT_S)
    except TimeoutError:
        log.info("%s --version gave no answer within %.0fs", argv[0], PROBE_TIMEOUT_S)
    finally:
        if process.returncode is None:  # no answer in time, or the agent is stopping: end it and its children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    if output is None:
        await process.wait()
        return None
    if process.returncode != 0:
        return None
    return parse_version(output)
