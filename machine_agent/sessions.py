"""The sessions this agent started, recorded in `<home>/sessions.json` so a restarted agent knows them.

Pids are reused, so a record also holds its process's start time, which stays the same for the life
of a process: a pid that runs with another start time is someone else's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Literal

import msgspec

from core.schemas import AgentName, Worktree
from machine_agent.private_files import private_dir, write_private
from machine_agent.tmux import TmuxLauncher

log = logging.getLogger(__name__)

SESSIONS_FILE = "sessions.json"
PROC = Path("/proc")
POLL_S = 0.02
KILL_WAIT_S = 5.0  # SIGKILL cannot be ignored; this only bounds the wait for the kernel


class SessionRecord(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    session_id: str
    job_id: str
    pid: int  # also the session's process group id
    process_start: str  # `process_start(pid)`; "" where there is no /proc, and then the pid is trusted
    agent: AgentName
    directory: str
    worktree: Worktree | None = None
    started_at: int  # epoch ms
    launcher: Literal["tmux", "pty"]


class _File(msgspec.Struct):
    sessions: list[SessionRecord] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_File)


class SessionStore:
    """Reads the file for every call, so several stores (and agent instances) on one home agree."""

    def __init__(self, home: Path) -> None:
        self.path = home / SESSIONS_FILE

    def add(self, record: SessionRecord) -> None:
        """Record a started session, replacing any record with the same sessionId."""
        self._save([r for r in self._load() if r.session_id != record.session_id] + [record])

    def running(self) -> list[SessionRecord]:
        """The recorded sessions whose process still runs; the others are dropped from the file."""
        records = self._load()
        alive = [r for r in records if is_running(r.pid, r.process_start)]
        if len(alive) != len(records):
            self._save(alive)
        return alive

    def get(self, session_id: str) -> SessionRecord | None:
        """The record of `session_id` if that session still runs."""
        return next((r for r in self.running() if r.session_id == session_id), None)

    async def stop(self, session_id: str, grace_s: float, *, tmux: TmuxLauncher | None = None) -> bool:
        """SIGTERM the session's process group, SIGKILL it after `grace_s`; False if it was not running.

        A tmux session is killed too when `tmux` is given (a person may have opened more windows in
        it). Files, and the session's worktree, are left alone.
        """
        record = self.get(session_id)
        if record is None:
            return False
        _signal_group(record.pid, signal.SIGTERM)
        if not await _ended(record, grace_s):
            log.info("session %s ignored SIGTERM for %.1fs: killing it", session_id, grace_s)
            if is_running(record.pid, record.process_start):
                _signal_group(record.pid, signal.SIGKILL)
            if not await _ended(record, KILL_WAIT_S):
                log.warning("session %s (pid %s) still runs after SIGKILL", session_id, record.pid)
        self._save([r for r in self._load() if r.session_id != session_id])
        if record.launcher == "tmux" and tmux is not None:
            with contextlib.suppress(OSError):
                await tmux.kill_session(session_id)
        return True

    def _load(self) -> list[SessionRecord]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return _decoder.decode(data).sessions
        except msgspec.DecodeError as exc:
            # Kept for a person to look at; the agent carries on without the records it held.
            aside = self.path.with_name(f"{SESSIONS_FILE}.corrupt-{int(time.time())}")
            log.warning("%s is unreadable (%s); moved to %s", self.path, exc, aside)
            os.replace(self.path, aside)
            return []

    def _save(self, records: list[SessionRecord]) -> None:
        private_dir(self.path.parent)
        tmp = self.path.with_name(f".{SESSIONS_FILE}.{os.getpid()}.tmp")
        with write_private(tmp) as f:
            f.write(_encoder.encode(_File(sessions=records)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one


def process_start(pid: int) -> str:
    """When `pid` started (clock ticks after boot, /proc/<pid>/stat field 22); "" if unknown."""
    stat = _stat(pid)
    return stat[1] if stat else ""


def is_running(pid: int, start: str) -> bool:
    """True if `pid` runs (a zombie does not) and, when `start` is given, started then."""
    if not PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process; nothing better to go on without /proc
        return True
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (not start or stat[1] == start)


def find_by_env(name: str, value: str) -> int | None:
    """A process whose environment has `name=value`, preferring a process group leader; None if none.

    Finds a session whose start the agent did not get to record (it died meanwhile) by its
    MACHINE_HUB_SESSION_ID. Processes of other users are not readable and so not found.
    """
    if not PROC.is_dir():
        return None
    wanted = f"{name}={value}".encode()
    found: list[tuple[bool, int, int]] = []
    with os.scandir(PROC) as entries:
        pids = [int(entry.name) for entry in entries if entry.name.isdigit()]
    for pid in pids:
        try:
            environ = (PROC / str(pid) / "environ").read_bytes()
            leader = os.getpgid(pid) == pid
        except OSError:  # gone meanwhile, or not ours
            continue
        if wanted in environ.split(b"\0") and (stat := _stat(pid)):
            # The session's own process leads its group; its children inherit the variable.
            found.append((not leader, int(stat[1]), pid))
    return min(found)[2] if found else None


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc, or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text(errors="replace")
    except OSError:
        return None
    # Field 2, the command name, may hold spaces and parentheses; it ends at the last ')'.
    fields = text.rpartition(")")[2].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        # Not a group leader after all (e.g. found by `find_by_env`): the process alone, then.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def _ended(record: SessionRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_running(record.pid, record.process_start):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True
