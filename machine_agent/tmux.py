"""Starts each session as a tmux session on the agent's own tmux server, named after its sessionId.

The tmux server daemonizes, so sessions outlive agent restarts and upgrades, and a person at the
machine can look in with `tmux -L machine-hub attach -t <sessionId>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from machine_agent import exec_env
from machine_agent.launches import OUTPUT_LOG, STDERR_LOG, Exited, Launched, log_tail
from machine_agent.private_files import append_private, private_dir

DEFAULT_SOCKET = "machine-hub"
TMUX_TIMEOUT_S = 10.0
POLL_S = 0.02
# A pane can read as dead (its terminal hit EOF) before tmux has reaped its process, and tmux may
# miss the SIGCHLD altogether when libutempter's handler is in place (tmux issues #311, #2679).
STATUS_GRACE_S = 2.0
# After the session is killed, `cat` may still be copying the last output into the log.
OUTPUT_GRACE_S = 0.5
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # ':' '.' '=' and spaces mean something in tmux targets
_PANE = "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}|#{pane_pid}|#{pid}"
_CAT = shutil.which("cat") or "cat"


class TmuxError(OSError):
    """tmux failed or timed out; an OSError, so that the spawner reports it as spawn_failed."""


@dataclass(frozen=True)
class _Pane:
    dead: bool
    returncode: int | None  # as in subprocess; None while tmux has not reaped a dead pane's process
    pid: int
    server_pid: int


class TmuxLauncher:
    """Runs sessions in tmux on socket `socket` (`tmux -L <socket>`); it never stops them itself."""

    name = "tmux"

    def __init__(self, socket: str = DEFAULT_SOCKET, *, tmux: str = "tmux", timeout_s: float = TMUX_TIMEOUT_S) -> None:
        self.socket = socket
        # Resolved now: a session environment's PATH (which a client may run with) need not hold it.
        self._tmux = shutil.which(tmux) or tmux
        self._timeout_s = timeout_s

    @staticmethod
    def available(tmux: str = "tmux") -> bool:
        """True when tmux is on PATH and runs."""
        path = shutil.which(tmux)
        if path is None:
            return False
        try:
            return subprocess.run([path, "-V"], capture_output=True, timeout=5, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    async def launch(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_dir: Path,
        settle_s: float,
        executable: str | None = None,
        session_id: str,
    ) -> Launched | Exited:
        """Start `argv` in tmux session `session_id`; report whether it still runs after `settle_s`.

        Raises OSError (TmuxError) when tmux fails, e.g. when a session of that name exists.
        """
        if not _NAME.fullmatch(session_id):
            raise ValueError(f"unusable tmux session name {session_id!r}")
        output_log, stderr_log = log_dir / OUTPUT_LOG, log_dir / STDERR_LOG
        spec = _write_spec(log_dir, env=env, cwd=cwd, executable=executable)
        for log in (output_log, stderr_log):  # made 0600 here: the pane's `cat >>` keeps the mode
            append_private(log).close()
        command = [sys.executable, "-I", exec_env.__file__, str(spec), str(stderr_log), "--", *argv]
        pipe = f"{shlex.quote(_CAT)} >> {shlex.quote(str(output_log))}"
        target = f"={session_id}:"
        try:
            # One tmux command list runs without the server reading any pane in between, so the
            # log misses no output and a CLI that exits at once still leaves its dead pane behind.
            # `-c` (where windows a person opens start) and pipe-pane's command are expanded as
            # formats, hence `_format`.
            await self._run(
                *("new-session", "-d", "-s", session_id, "-c", _literal(_format(str(cwd)))),
                *("--", *map(_literal, command), ";"),
                *("set-option", "-w", "-t", target, "remain-on-exit", "on", ";"),
                *("pipe-pane", "-t", target, _format(pipe)),
                env=env,
            )
        except BaseException:
            _unlink(spec)
            raise
        try:
            pane = await self._settle(session_id, settle_s)
            returncode = await self._returncode(session_id, pane) if pane.dead else None
        except BaseException:
            # Nobody would learn about this session (cancelled, or tmux failed), so it must not stay.
            await self._discard(session_id, spec)
            raise
        if returncode is None:
            return Launched(pid=pane.pid, output_log=output_log, stderr_log=stderr_log)
        await self._discard(session_id, spec)
        await _quiet(output_log)
        return Exited(returncode=returncode, tail=log_tail(stderr_log, output_log))

    async def has_session(self, session_id: str) -> bool:
        try:
            await self._run("has-session", "-t", f"={session_id}")
        except TmuxError:
            return False
        return True

    async def kill_session(self, session_id: str) -> bool:
        """Kill tmux session `session_id` and what runs in it; False if there was none."""
        if not await self.has_session(session_id):
            return False
        await self._run("kill-session", "-t", f"={session_id}")
        return True

    async def close(self) -> None:
        """Nothing to release: the sessions are meant to keep running in the tmux server."""

    async def _discard(self, session_id: str, spec: Path) -> None:
        with contextlib.suppress(OSError):
            await self.kill_session(session_id)
        _unlink(spec)

    async def _settle(self, session_id: str, settle_s: float) -> _Pane:
        target = f"={session_id}:"
        deadline = time.monotonic() + settle_s
        while (remaining := deadline - time.monotonic()) > 0:
            pane = await self._pane(session_id)
            if pane.dead:
                return pane
            await asyncio.sleep(min(POLL_S, remaining))
        # Read and switch off in one command list: a pane that dies later then closes its session,
        # and one that died just now is still seen as dead.
        return await self._pane(session_id, ";", "set-option", "-w", "-t", target, "remain-on-exit", "off")

    async def _pane(self, session_id: str, *then: str) -> _Pane:
        out = await self._run("display-message", "-p", "-t", f"={session_id}:", _PANE, *then)
        dead, status, dead_signal, pid, server_pid = out.strip().split("|")
        returncode = int(status) if status else -int(dead_signal) if dead_signal else None
        return _Pane(dead=dead == "1", returncode=returncode, pid=int(pid), server_pid=int(server_pid))

    async def _returncode(self, session_id: str, pane: _Pane) -> int:
        deadline = time.monotonic() + STATUS_GRACE_S
        while pane.returncode is None:
            if time.monotonic() > deadline:
                raise TmuxError(f"the process of tmux session {session_id} ended without an exit status")
            # A SIGCHLD makes the server reap every child that ended, ours included.
            with contextlib.suppress(OSError):
                os.kill(pane.server_pid, signal.SIGCHLD)
            await asyncio.sleep(POLL_S)
            pane = await self._pane(session_id)
        return pane.returncode

    async def _run(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        argv = [self._tmux, "-L", self.socket, "-f", "/dev/null", *args]
        # Output goes to files, not pipes: a tmux server this client starts may inherit a pipe's
        # other end (uvloop passes extra descriptors), and then no end-of-file would ever come.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_server_env(os.environ if env is None else env),
                # A server started by this client keeps its directory for good: never a session's.
                cwd="/",
            )
            try:
                await asyncio.wait_for(proc.wait(), self._timeout_s)
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                if isinstance(exc, TimeoutError):
                    raise TmuxError(errno.ETIMEDOUT, f"tmux {args[0]} took over {self._timeout_s:g}s") from None
                raise
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if proc.returncode != 0:
            detail = stderr.decode(errors="replace").strip() or f"status {proc.returncode}"
            raise TmuxError(f"tmux {args[0]} failed: {detail}")
        return stdout.decode(errors="replace")


def _write_spec(log_dir: Path, *, env: Mapping[str, str], cwd: Path, executable: str | None) -> Path:
    """The session's environment, cwd and program in a 0600 file that `exec_env` reads and deletes."""
    if not os.path.isdir(cwd):  # refused up front, as the pty launcher's Popen would
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(cwd))
    private_dir(log_dir)
    fd, name = tempfile.mkstemp(prefix=".session-env-", suffix=".json", dir=log_dir)  # mkstemp makes it 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"env": dict(env), "cwd": str(cwd), "executable": executable}, f)
    return Path(name)


def _server_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment of a tmux client, which becomes the server's global environment if it starts it.

    Only new-session starts a server, and it passes the session's environment, which lacks the
    agent's secrets, so windows a person opens do not get them; nor the session's own variables,
    which would be stale there.
    """
    keep = {
        k: v for k, v in env.items() if not k.startswith(("MACHINE_HUB_", "REDIS_", "TMUX")) and k != "CLI_API_TOKEN"
    }
    # Every call must find the same socket directory, whatever the session's environment says.
    if tmpdir := os.environ.get("TMUX_TMPDIR"):
        keep["TMUX_TMPDIR"] = tmpdir
    return keep


def _format(text: str) -> str:
    """`text` as a tmux format that expands to itself."""
    return text.replace("#", "##")


def _literal(arg: str) -> str:
    """`arg` as one tmux command-line argument: a trailing ';' would otherwise end the command."""
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


async def _quiet(path: Path) -> None:
    """Wait (briefly) until `path` stops growing."""
    deadline = time.monotonic() + OUTPUT_GRACE_S
    last, still = -1, 0
    while still < 3 and time.monotonic() < deadline:
        size = _size(path)
        still, last = (still + 1, last) if size == last else (0, size)
        await asyncio.sleep(POLL_S)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0  # the log is only ever appended to


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
