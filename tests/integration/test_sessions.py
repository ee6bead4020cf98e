"""The session store with real processes: the fake CLI stands in for a session's process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from core.schemas import Worktree
from machine_agent.sessions import SessionRecord, SessionStore, find_by_env, is_running, process_start

FAKE_CLI = Path(__file__).resolve().parents[1] / "fixtures" / "fake_cli.py"

StartCli = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[StartCli]:
    """Start the fake CLI in its own process session, as launchers do; all are reaped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        cli_log = tmp_path / f"cli-{len(procs)}.jsonl"
        full_env = os.environ | {"FAKE_CLI_LOG": str(cli_log), "FAKE_CLI_LIFETIME": "60"} | env
        # stdin is a pipe kept open: the fake CLI idles until its stdin ends.
        proc = subprocess.Popen(
            [sys.executable, str(FAKE_CLI)], env=full_env, stdin=subprocess.PIPE, start_new_session=True
        )
        procs.append(proc)
        deadline = time.monotonic() + 10.0
        while not (cli_log.exists() and cli_log.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "the fake CLI did not start"
            time.sleep(0.02)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def _record(pid: int, session_id: str, **fields: object) -> SessionRecord:
    record = SessionRecord(
        session_id=session_id,
        job_id="job-1",
        pid=pid,
        process_start=process_start(pid),
        agent="claude",
        directory="/work/proj",
        started_at=int(time.time() * 1000),
        launcher="pty",
    )
    return msgspec.structs.replace(record, **fields)


def _file(home: Path) -> dict[str, list[dict[str, object]]]:
    data: dict[str, list[dict[str, object]]] = json.loads((home / "sessions.json").read_text())
    return data


def test_process_start_identifies_a_process() -> None:
    own = process_start(os.getpid())
    assert own.isdigit() and own == process_start(os.getpid())
    assert is_running(os.getpid(), own)
    assert process_start(2**22 + 1) == ""  # above Linux's pid limit: never a process
    assert not is_running(2**22 + 1, "")


def test_records_round_trip_across_store_instances(tmp_path: Path, start_cli: StartCli) -> None:
    home = tmp_path / "home"
    proc = start_cli()
    worktree = Worktree(path="/work/proj-worktrees/fix", branch="mh-fix", base_path="/work/proj")
    first = _record(proc.pid, "s-1", worktree=worktree, launcher="tmux")
    second = _record(proc.pid, "s-2")
    store = SessionStore(home)
    store.add(first)
    store.add(second)
    store.add(second)  # the same session again replaces its record

    again = SessionStore(home)
    assert again.running() == [first, second]
    assert again.get("s-1") == first and again.get("nope") is None
    [stored, _] = _file(home)["sessions"]
    assert stored["sessionId"] == "s-1" and stored["processStart"] == first.process_start
    assert stored["worktree"] == {"path": worktree.path, "branch": "mh-fix", "basePath": "/work/proj"}
    assert {"jobId", "pid", "agent", "directory", "startedAt", "launcher"} <= set(stored)
    assert not list(home.glob(".*.tmp"))


def test_ended_and_reused_pids_are_not_running_and_are_pruned(tmp_path: Path, start_cli: StartCli) -> None:
    home = tmp_path / "home"
    ended, alive = start_cli(), start_cli()
    store = SessionStore(home)
    store.add(_record(ended.pid, "s-ended"))
    store.add(_record(alive.pid, "s-alive"))
    # The pid runs, but it is another process than the one recorded: the pid was reused.
    store.add(_record(alive.pid, "s-reused", process_start="1"))
    os.killpg(ended.pid, signal.SIGKILL)
    ended.wait()

    assert [r.session_id for r in store.running()] == ["s-alive"]
    assert [r["sessionId"] for r in _file(home)["sessions"]] == ["s-alive"]
    assert store.get("s-ended") is None and store.get("s-reused") is None


def test_a_zombie_is_not_running(start_cli: StartCli) -> None:
    proc = start_cli()
    start = process_start(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while is_running(proc.pid, start):  # not reaped yet: a zombie until `wait`
        assert time.monotonic() < deadline, "a killed process still counts as running"
        time.sleep(0.02)
    assert process_start(proc.pid) == start


async def test_stop_kills_a_session_that_ignores_sigterm(tmp_path: Path, start_cli: StartCli) -> None:
    signals = tmp_path / "signals.log"
    proc = start_cli(FAKE_CLI_IGNORE_TERM="1", FAKE_CLI_SIGNAL_LOG=str(signals))
    store = SessionStore(tmp_path / "home")
    store.add(_record(proc.pid, "s-stubborn"))

    started = time.monotonic()
    assert await store.stop("s-stubborn", 0.5)
    assert time.monotonic() - started >= 0.5
    assert _wait(proc) == -signal.SIGKILL
    assert _read(signals) == f"SIGTERM {proc.pid}\n"
    assert store.running() == [] and store.get("s-stubborn") is None
    assert not await store.stop("s-stubborn", 0.5)


async def test_stop_ends_a_session_with_sigterm(tmp_path: Path, start_cli: StartCli) -> None:
    proc = start_cli()
    store = SessionStore(tmp_path / "home")
    store.add(_record(proc.pid, "s-polite"))
    started = time.monotonic()
    assert await store.stop("s-polite", 10.0)
    assert time.monotonic() - started < 5.0
    assert _wait(proc) == -signal.SIGTERM


async def test_stop_of_unknown_or_ended_sessions(tmp_path: Path, start_cli: StartCli) -> None:
    store = SessionStore(tmp_path / "home")
    assert not await store.stop("nope", 0.1)
    proc = start_cli()
    store.add(_record(proc.pid, "s-gone"))
    os.killpg(proc.pid, signal.SIGKILL)
    assert _wait(proc) == -signal.SIGKILL
    assert not await store.stop("s-gone", 0.1)


def test_find_by_env_finds_a_session_process(start_cli: StartCli) -> None:
    session_id = str(uuid.uuid4())
    proc = start_cli(MACHINE_HUB_SESSION_ID=session_id)
    start_cli(MACHINE_HUB_SESSION_ID=str(uuid.uuid4()))
    assert find_by_env("MACHINE_HUB_SESSION_ID", session_id) == proc.pid
    assert find_by_env("MACHINE_HUB_SESSION_ID", session_id[:-1]) is None
    assert find_by_env("MACHINE_HUB_SESSION", session_id) is None


def test_a_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "sessions.json").write_text("{not json")
    store = SessionStore(home)
    assert store.running() == []
    assert [p.name.startswith("sessions.json.corrupt-") for p in home.iterdir()] == [True]


def _wait(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait(timeout=5.0)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
