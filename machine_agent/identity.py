"""Who this machine is: its persistent id, what it announces, and which agent runs on a home.

`<home>/agent.json` names the running agent's machine id, namespace and key prefix, written when
it starts (it holds the home's lock then), so `agent status` reports that agent even when its id
came from --machine-id rather than the id file.
"""

from __future__ import annotations

import importlib.metadata
import os
import secrets
import socket
import sys
from pathlib import Path

import msgspec

from core.errors import SettingsError
from core.machine_schemas import Agents, MachineInfo, MachineMetadata
from core.names import valid_machine_id
from machine_agent.private_files import private_dir, write_private

ID_FILE = "machine-id"
RUNNING_FILE = "agent.json"
# Node's os.platform() names, as HAPI reports them.
PLATFORMS = {"linux": "linux", "darwin": "darwin", "win32": "win32", "cygwin": "win32"}


def machine_id(home: Path, given: str = "") -> str:
    """The explicit id if given; else the one kept in `home`, made once as machine_<random>."""
    if given:
        if not valid_machine_id(given):
            raise SettingsError(f"machine id {given!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
        return given
    path = home / ID_FILE
    if path.exists():
        stored = path.read_text().strip()
        if valid_machine_id(stored):
            return stored
        raise SettingsError(f"{path} holds no valid machine id; delete it to make a new one")
    private_dir(home)
    new = "machine_" + secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    with write_private(tmp) as f:
        f.write(new.encode() + b"\n")
    os.replace(tmp, path)
    return new


def version() -> str:
    try:
        return importlib.metadata.version("machine-hub")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def metadata(launcher: str) -> MachineMetadata:
    return MachineMetadata(
        hostname=socket.gethostname(),
        platform=PLATFORMS.get(sys.platform, sys.platform),
        version=version(),
        launcher=launcher,
    )


def encoded_metadata(launcher: str) -> bytes:
    return msgspec.json.encode(metadata(launcher))


def info(launcher: str, *, agents: Agents | None, labels: dict[str, str], max_sessions: int) -> MachineInfo:
    """Everything the agent announces in its `info` key."""
    base = metadata(launcher)
    return MachineInfo(
        hostname=base.hostname,
        platform=base.platform,
        version=base.version,
        launcher=base.launcher,
        agents=agents,
        labels=labels,
        max_sessions=max_sessions,
    )


class Running(msgspec.Struct, rename="camel"):
    """Which agent runs on a home (`agent status` reads it while that agent holds the lock)."""

    pid: int
    machine_id: str
    namespace: str
    key_prefix: str


def write_running(home: Path, running: Running) -> None:
    private_dir(home)
    path = home / RUNNING_FILE
    tmp = path.with_suffix(".tmp")
    with write_private(tmp) as f:
        f.write(msgspec.json.encode(running) + b"\n")
    os.replace(tmp, path)


def read_running(home: Path) -> Running | None:
    try:
        return msgspec.json.decode((home / RUNNING_FILE).read_bytes(), type=Running)
    except (OSError, msgspec.DecodeError):
        return None
