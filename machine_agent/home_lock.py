"""One agent per home folder: the running agent holds an exclusive lock on `<home>/agent.lock`.

The lock is the operating system's (flock), so it goes away with the process, however it ends;
the file also names the pid that holds it, for the message a second agent prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from core.errors import RegistrationError
from machine_agent.private_files import open_private, private_dir

LOCK_FILE = "agent.lock"


def hold(home: Path) -> IO[str]:
    """Take the lock for this process's lifetime (keep the returned file open)."""
    private_dir(home)
    lock = os.fdopen(open_private(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise RegistrationError(f"another agent already runs with home {home} (pid {holder})") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def holder(home: Path) -> int | None:
    """The pid of the agent running with this home, or None when none does."""
    path = home / LOCK_FILE
    if not path.exists():
        return None
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            text = lock.read().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(lock, fcntl.LOCK_UN)
        return None
