"""Who this machine is: its persistent id and the metadata its heartbeat advertises."""

from __future__ import annotations

import importlib.metadata
import os
import secrets
import socket
import sys
from pathlib import Path

import msgspec

from core.errors import SettingsError
from core.names import valid_machine_id
from core.schemas import MachineMetadata

ID_FILE = "machine-id"
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
    home.mkdir(parents=True, exist_ok=True)
    new = "machine_" + secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
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
