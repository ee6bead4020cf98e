"""The agent's own files are its user's alone: the home 0700, every file in it 0600.

Sessions run as the same OS user and could read them anyway; the modes keep other local users
out, and keep the agent's state out of reach of what merely shares the machine. The process
umask is left alone on purpose: sessions inherit it, and the files a CLI makes in a repository
must get the user's usual modes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """os.open with 0600 for a new file, and 0600 forced on an existing one."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def append_private(path: Path, *, buffering: int = -1) -> BinaryIO:
    """`path` opened for binary append, 0600."""
    fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "ab", buffering=buffering)


def write_private(path: Path) -> BinaryIO:
    """`path` opened for binary writing (truncated), 0600."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")
