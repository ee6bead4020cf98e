"""Starts session processes on a pseudo-terminal and keeps logging what they print.

The AI coding CLIs are interactive and quit without a terminal, so stdin and stdout are the slave
side of a pty; the agent drains the master side into `output.log` for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pty
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from machine_agent.launches import OUTPUT_LOG, STDERR_LOG, Exited, Launched, log_tail
from machine_agent.private_files import append_private, private_dir

log = logging.getLogger(__name__)

# Once the child is gone the pty reports EOF at once, unless a grandchild still holds it.
DRAIN_GRACE_S = 0.5
READ_SIZE = 65536
WINDOW_ROWS, WINDOW_COLS = 24, 80


@dataclass(eq=False)
class _Session:
    proc: subprocess.Popen[bytes]
    master: int
    output: BinaryIO
    exited: asyncio.Future[int]
    drained: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    draining: bool = True

    def drain(self) -> None:
        try:
            data = os.read(self.master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            # Linux reports EIO once every slave fd is closed; anything else ends the log too.
            if exc.errno != errno.EIO:
                log.warning("reading the terminal of pid %s failed: %s", self.proc.pid, exc)
            data = b""
        if data:
            self.output.write(data)
        else:
            self.stop()

    def stop(self) -> None:
        if not self.draining:
            return
        self.draining = False
        self.loop.remove_reader(self.master)
        os.close(self.master)
        self.output.close()
        if not self.drained.done():
            self.drained.set_result(None)


class Launcher:
    """Owns the running sessions: their process handles, pty masters and output logs."""

    name = "pty"

    def __init__(self) -> None:
        self._sessions: dict[int, _Session] = {}

    @property
    def live(self) -> frozenset[int]:
        """Pids of the sessions started here that still run or whose output is still drained."""
        return frozenset(self._sessions)

    async def launch(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_dir: Path,
        settle_s: float,
        executable: str | None = None,
        session_id: str = "",
    ) -> Launched | Exited:
        """Start `argv` and report whether it is still running after `settle_s`.

        Raises OSError when the process cannot be started at all (exec or chdir failed).
        `session_id` is not needed here (the pid identifies the session); it is taken so that
        every `SessionLauncher` is called alike.
        """
        output_log, stderr_log = log_dir / OUTPUT_LOG, log_dir / STDERR_LOG
        session = _start(argv, cwd=cwd, env=env, executable=executable, output_log=output_log, stderr_log=stderr_log)
        self._sessions[session.proc.pid] = session
        session.exited.add_done_callback(lambda _: self._forget(session))
        session.drained.add_done_callback(lambda _: self._forget(session))
        try:
            await asyncio.wait([session.exited], timeout=settle_s)
        except asyncio.CancelledError:
            # Nobody would learn about this process, so it must not outlive the spawn.
            _kill(session.proc.pid)
            raise
        if not session.exited.done():
            return Launched(pid=session.proc.pid, output_log=output_log, stderr_log=stderr_log)
        await asyncio.wait([session.drained], timeout=DRAIN_GRACE_S)
        session.stop()
        return Exited(returncode=session.exited.result(), tail=log_tail(stderr_log, output_log))

    async def wait(self, pid: int, timeout_s: float) -> int | None:
        """Return code of a session started here once it ended; None on timeout or if not tracked."""
        session = self._sessions.get(pid)
        if session is None:
            return None
        done, _ = await asyncio.wait([session.exited], timeout=timeout_s)
        return session.exited.result() if done else None

    async def close(self) -> None:
        """Stop draining every session; the processes keep running (and are still reaped)."""
        for session in list(self._sessions.values()):
            session.stop()
        self._sessions.clear()

    def _forget(self, session: _Session) -> None:
        if not (session.exited.done() and session.drained.done()):
            return
        if self._sessions.get(session.proc.pid) is session:
            del self._sessions[session.proc.pid]


def _start(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    executable: str | None,
    output_log: Path,
    stderr_log: Path,
) -> _Session:
    loop = asyncio.get_running_loop()
    private_dir(output_log.parent)
    output = append_private(output_log, buffering=0)  # unbuffered: the log is read while the session runs
    master, slave = pty.openpty()
    try:
        # A fresh pty is 0x0, which makes full-screen CLIs draw nothing or fail.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", WINDOW_ROWS, WINDOW_COLS, 0, 0))
        with append_private(stderr_log) as stderr:
            proc = subprocess.Popen(
                list(argv),
                executable=executable,
                cwd=cwd,
                env=dict(env),
                stdin=slave,
                stdout=slave,
                stderr=stderr,
                start_new_session=True,
            )
    except BaseException:
        os.close(master)
        output.close()
        raise
    finally:
        # Only the child may hold the slave, or the master would never see EOF when it exits.
        os.close(slave)
    os.set_blocking(master, False)
    session = _Session(
        proc=proc,
        master=master,
        output=output,
        exited=loop.create_future(),
        drained=loop.create_future(),
        loop=loop,
    )
    loop.add_reader(master, session.drain)
    # A thread per session rather than the default executor, whose few workers long sessions would use up.
    threading.Thread(target=_reap, args=(session,), name=f"reap-{proc.pid}", daemon=True).start()
    return session


def _reap(session: _Session) -> None:
    code = session.proc.wait()
    with contextlib.suppress(RuntimeError):  # the loop is closed: the agent no longer cares
        session.loop.call_soon_threadsafe(_set_exited, session, code)


def _set_exited(session: _Session, code: int) -> None:
    if not session.exited.done():
        session.exited.set_result(code)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
