"""What every session launcher hands back, and the last lines a session that ended printed.

The pty `Launcher` and tmux's `TmuxLauncher` both log a session to `output.log` (its terminal) and
`stderr.log`, and both report a session that ended within the settle time with the tail of those.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

OUTPUT_LOG = "output.log"
STDERR_LOG = "stderr.log"
TAIL_LINES = 20
TAIL_CHARS = 2000
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


@dataclass(frozen=True)
class Launched:
    """A session process that was still running when the settle time ran out."""

    pid: int  # also its process group id: every session runs in its own process session
    output_log: Path
    stderr_log: Path


@dataclass(frozen=True)
class Exited:
    """A session process that ended before the settle time; `returncode` as in subprocess."""

    returncode: int
    tail: str  # end of its stderr, or of its terminal output when stderr was empty

    @property
    def status(self) -> str:
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = "unknown signal"
            return f"signal {-self.returncode} ({name})"
        return f"status {self.returncode}"


class SessionLauncher(Protocol):
    """What the spawner needs of a launcher: this module's pty `Launcher` or tmux's `TmuxLauncher`."""

    @property
    def name(self) -> str: ...  # "pty" or "tmux", as the machine's metadata reports it

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
    ) -> Launched | Exited: ...

    async def close(self) -> None: ...


def log_tail(stderr_log: Path, output_log: Path) -> str:
    """What a session that ended printed last: its stderr, or else its terminal output."""
    return _tail(stderr_log) or _tail(output_log, strip_ansi=True)


def _tail(path: Path, *, strip_ansi: bool = False) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    if strip_ansi:
        text = _ANSI.sub("", text)
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines[-TAIL_LINES:]).strip()[-TAIL_CHARS:]
