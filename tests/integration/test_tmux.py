"""The tmux launcher with a real tmux server on a private socket and the fake CLI."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from machine_agent.launches import Exited, Launched, SessionLauncher
from machine_agent.sessions import SessionRecord, SessionStore, is_running, process_start
from machine_agent.tmux import TmuxLauncher
from tests.waiting import cli_records, eventually

FAKE_CLI = Path(__file__).resolve().parents[1] / "fixtures" / "fake_cli.py"
REPO = Path(__file__).resolve().parents[2]
SETTLE_S = 0.3
# Starts a session, says its pid, then waits to be killed: an agent that dies under its session.
LAUNCH_AND_WAIT = """
import asyncio, json, sys
from pathlib import Path
from machine_agent.tmux import TmuxLauncher

async def main():
    socket, session_id, cwd, log_dir, env = sys.argv[1:6]
    outcome = await TmuxLauncher(socket).launch(
        ["claude"], cwd=Path(cwd), env=json.loads(env), log_dir=Path(log_dir), settle_s=0.3, session_id=session_id
    )
    print(json.dumps({"pid": outcome.pid}), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=False, cwd="/")


def _has_session(socket: str, session_id: str) -> bool:
    return _tmux(socket, "has-session", "-t", f"={session_id}").returncode == 0


@pytest.fixture
def socket() -> Iterator[str]:
    """A private tmux server for the test, killed (with its socket file) at teardown."""
    name = f"machine-hub-test-{uuid.uuid4().hex[:8]}"
    yield name
    _tmux(name, "kill-server")
    tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"
    (Path(tmpdir) / f"tmux-{os.getuid()}" / name).unlink(missing_ok=True)


@pytest.fixture
def launcher(socket: str) -> TmuxLauncher:
    return TmuxLauncher(socket)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("fake_cli", FAKE_CLI)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install(tmp_path / "bin")
    return tmp_path / "bin"


@pytest.fixture
def cli_log(tmp_path: Path) -> Path:
    return tmp_path / "cli.jsonl"


@pytest.fixture
def env(tmp_path: Path, fake_bin: Path, cli_log: Path) -> dict[str, str]:
    return {
        "PATH": os.pathsep.join([str(fake_bin), os.environ.get("PATH", os.defpath)]),
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "FAKE_CLI_LOG": str(cli_log),
        "FAKE_CLI_LIFETIME": "60",
    }


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def _spec_files(log_dir: Path) -> list[Path]:
    return list(log_dir.glob(".session-env-*"))


def test_both_launchers_fit_the_protocol(launcher: TmuxLauncher) -> None:
    chosen: SessionLauncher = launcher
    assert chosen.name == "tmux"
    assert TmuxLauncher.available()
    assert not TmuxLauncher.available("no-such-tmux")


async def test_session_runs_in_tmux_with_exactly_its_environment(
    launcher: TmuxLauncher,
    socket: str,
    env: dict[str, str],
    tmp_path: Path,
    cli_log: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server started from an environment holding a variable the session must not see.
    monkeypatch.setenv("MH_TEST_SERVER_ONLY", "stale")
    assert _tmux(socket, "-f", "/dev/null", "new-session", "-d", "-s", "placeholder", "sleep 60").returncode == 0
    assert _tmux(socket, "show-environment", "-g", "MH_TEST_SERVER_ONLY").stdout.strip() == "MH_TEST_SERVER_ONLY=stale"

    session_id = str(uuid.uuid4())
    cwd = tmp_path / "my project #{pane_pid} 'x'"  # tmux formats and shell quotes stay literal
    cwd.mkdir()
    log_dir = tmp_path / "logs #{pid}" / session_id
    launch_env = env | {
        "MACHINE_HUB_SESSION_ID": session_id,
        "ONLY_IN_LAUNCH": "a b; $HOME 'q' #{pid}",
        "FAKE_CLI_STDOUT": "hello from the fake cli\n",
    }
    argv = [sys.executable, str(FAKE_CLI), "--model", "big model", "ends;", "#{pane_pid}"]
    outcome = await launcher.launch(
        argv, cwd=cwd, env=launch_env, log_dir=log_dir, settle_s=SETTLE_S, session_id=session_id
    )

    assert isinstance(outcome, Launched), outcome
    assert _has_session(socket, session_id)
    [record] = await cli_records(cli_log)
    assert record["argv"] == argv[2:]
    assert record["cwd"] == _real(cwd)
    assert record["stdin_tty"] and record["stdout_tty"]
    assert record["pid"] == record["pgid"] == outcome.pid
    pane_pid = _tmux(socket, "display-message", "-p", "-t", f"={session_id}:", "#{pane_pid}").stdout.strip()
    assert pane_pid == str(outcome.pid)
    # The process's initial environment is the launch environment, no more and no less.
    assert _environ(outcome.pid) == launch_env
    assert "MH_TEST_SERVER_ONLY" not in record["env_names"] and "TMUX" not in record["env_names"]
    await eventually(lambda: "hello from the fake cli" in outcome.output_log.read_text(), "the output is logged")
    await eventually(lambda: not _spec_files(log_dir), "the environment file is deleted")
    assert outcome.output_log == log_dir / "output.log" and outcome.stderr_log == log_dir / "stderr.log"


async def test_cli_is_found_on_the_path_of_the_session_environment(
    launcher: TmuxLauncher, env: dict[str, str], fake_bin: Path, tmp_path: Path, cli_log: Path
) -> None:
    assert str(fake_bin) not in os.environ.get("PATH", "")
    outcome = await launcher.launch(
        ["codex", "--yes"], cwd=tmp_path, env=env, log_dir=tmp_path / "logs", settle_s=SETTLE_S, session_id="s-path"
    )
    assert isinstance(outcome, Launched), outcome
    [record] = await cli_records(cli_log)
    assert (record["name"], record["argv"], record["pid"]) == ("codex", ["--yes"], outcome.pid)


async def test_resolved_executable_is_run_with_the_given_argv0(
    launcher: TmuxLauncher, env: dict[str, str], fake_bin: Path, tmp_path: Path, cli_log: Path
) -> None:
    outcome = await launcher.launch(
        ["claude", "--x"],
        cwd=tmp_path,
        env=env | {"PATH": "/nonexistent"},
        log_dir=tmp_path / "logs",
        settle_s=SETTLE_S,
        executable=str(fake_bin / "claude"),
        session_id="s-exe",
    )
    assert isinstance(outcome, Launched), outcome
    [record] = await cli_records(cli_log)
    assert (record["name"], record["argv"]) == ("claude", ["--x"])


async def test_cli_that_exits_at_once(launcher: TmuxLauncher, socket: str, env: dict[str, str], tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    extra = {"FAKE_CLI_EXIT": "3", "FAKE_CLI_STDERR": "error: no API key configured\n"}
    outcome = await launcher.launch(
        ["claude"], cwd=tmp_path, env=env | extra, log_dir=log_dir, settle_s=5.0, session_id="s-exit"
    )
    assert outcome == Exited(returncode=3, tail="error: no API key configured")
    assert not _has_session(socket, "s-exit")
    assert not _spec_files(log_dir)


async def test_exit_without_stderr_reports_the_terminal_output(
    launcher: TmuxLauncher, env: dict[str, str], tmp_path: Path
) -> None:
    extra = {"FAKE_CLI_EXIT": "1", "FAKE_CLI_STDOUT": "\x1b[31mplease log in first\x1b[0m\r\n"}
    outcome = await launcher.launch(
        ["gemini"], cwd=tmp_path, env=env | extra, log_dir=tmp_path / "logs", settle_s=5.0, session_id="s-out"
    )
    assert outcome == Exited(returncode=1, tail="please log in first")


async def test_cli_killed_by_a_signal_or_missing(launcher: TmuxLauncher, env: dict[str, str], tmp_path: Path) -> None:
    killed = await launcher.launch(
        ["sh", "-c", "kill -KILL $$"], cwd=tmp_path, env=env, log_dir=tmp_path / "a", settle_s=5.0, session_id="s-kill"
    )
    assert isinstance(killed, Exited) and killed.returncode == -signal.SIGKILL, killed
    missing = await launcher.launch(
        ["no-such-cli"], cwd=tmp_path, env=env, log_dir=tmp_path / "b", settle_s=5.0, session_id="s-missing"
    )
    assert missing == Exited(returncode=127, tail="machine-hub: cannot start no-such-cli: No such file or directory")


async def test_tmux_failures_are_os_errors(
    launcher: TmuxLauncher, socket: str, env: dict[str, str], tmp_path: Path
) -> None:
    first = await launcher.launch(
        ["claude"], cwd=tmp_path, env=env, log_dir=tmp_path / "a", settle_s=0.1, session_id="s1"
    )
    assert isinstance(first, Launched)
    with pytest.raises(OSError, match="duplicate session"):
        await launcher.launch(["claude"], cwd=tmp_path, env=env, log_dir=tmp_path / "b", settle_s=0.1, session_id="s1")
    assert not _spec_files(tmp_path / "b")
    assert is_running(first.pid, process_start(first.pid))
    with pytest.raises(FileNotFoundError):
        await launcher.launch(
            ["claude"], cwd=tmp_path / "nope", env=env, log_dir=tmp_path / "c", settle_s=0.1, session_id="s2"
        )
    assert not _has_session(socket, "s2")


async def test_session_that_ends_later_disappears(
    launcher: TmuxLauncher, socket: str, env: dict[str, str], tmp_path: Path
) -> None:
    outcome = await launcher.launch(
        ["claude"], cwd=tmp_path, env=env, log_dir=tmp_path, settle_s=SETTLE_S, session_id="s-end"
    )
    assert isinstance(outcome, Launched)
    os.killpg(outcome.pid, signal.SIGTERM)
    await eventually(lambda: not _has_session(socket, "s-end"), "the ended session is gone")


async def test_cancelled_launch_kills_the_session(
    launcher: TmuxLauncher, socket: str, env: dict[str, str], tmp_path: Path, cli_log: Path
) -> None:
    task = asyncio.create_task(
        launcher.launch(["claude"], cwd=tmp_path, env=env, log_dir=tmp_path, settle_s=30.0, session_id="s-cancel")
    )
    [record] = await cli_records(cli_log)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _has_session(socket, "s-cancel")
    await eventually(lambda: not is_running(record["pid"], ""), "the cancelled session's process ended")


async def test_session_outlives_the_process_that_launched_it(
    socket: str, env: dict[str, str], tmp_path: Path, cli_log: Path
) -> None:
    args = [socket, "s-orphan", str(tmp_path), str(tmp_path / "logs"), json.dumps(env)]
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCH_AND_WAIT, *args, cwd=REPO, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        line = await asyncio.wait_for(agent.stdout.readline(), 20.0) if agent.stdout else b""
    finally:
        os.killpg(agent.pid, signal.SIGKILL)  # the whole process group, as a terminal's Ctrl-C would
        await agent.communicate()
    pid = json.loads(line)["pid"]
    [record] = await cli_records(cli_log)
    assert record["pid"] == pid
    assert _has_session(socket, "s-orphan")
    assert is_running(pid, process_start(pid))
    server_pid = int(_tmux(socket, "display-message", "-p", "#{pid}").stdout)
    assert os.getpgid(server_pid) != agent.pid and os.getsid(server_pid) != agent.pid


async def test_stop_ends_a_tmux_session_with_windows_a_person_opened(
    launcher: TmuxLauncher, socket: str, env: dict[str, str], tmp_path: Path
) -> None:
    outcome = await launcher.launch(
        ["claude"], cwd=tmp_path, env=env, log_dir=tmp_path, settle_s=SETTLE_S, session_id="s-stop"
    )
    assert isinstance(outcome, Launched)
    assert _tmux(socket, "new-window", "-t", "=s-stop:", "sleep 60").returncode == 0
    store = SessionStore(tmp_path / "home")
    store.add(
        SessionRecord(
            session_id="s-stop",
            job_id="job-1",
            pid=outcome.pid,
            process_start=process_start(outcome.pid),
            agent="claude",
            directory=str(tmp_path),
            started_at=int(time.time() * 1000),
            launcher="tmux",
        )
    )
    assert await store.stop("s-stop", 2.0, tmux=launcher)
    assert not _has_session(socket, "s-stop")
    assert not is_running(outcome.pid, "")
    assert store.running() == []
