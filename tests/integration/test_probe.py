"""The agent asks real executables for their versions: found ones only, in parallel, with a deadline."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from machine_agent import probe
from tests.e2e.harness import load_fake_cli
from tests.waiting import eventually


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_only_installed_clis_are_listed_with_their_versions(tmp_path: Path) -> None:
    load_fake_cli().install(tmp_path / "bin", names=("claude", "cursor-agent"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "FAKE_CLI_VERSION": "2.1.0 (Claude Code)"}
    assert await probe.probe({}, env, str(tmp_path)) == {"claude": "2.1.0", "cursor": "2.1.0"}


async def test_overrides_failures_and_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 0.5)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script(bin_dir, "codex", "exit 2")
    script(bin_dir, "gemini", "sleep 30")
    script(bin_dir, "opencode", 'echo "$@" >&2; echo "$MARK"')
    wrapped = script(tmp_path, "my-claude", 'test "$1" = --flag && echo "claude $2 9.9.9"')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MARK": "v7.0"}
    started = time.monotonic()
    found = await probe.probe({"claude": [str(wrapped), "--flag"]}, env, str(tmp_path))
    assert time.monotonic() - started < 5, "every CLI is asked at once, each within its deadline"
    assert found == {"claude": "9.9.9", "codex": None, "gemini": None, "opencode": "7.0"}


async def test_a_hung_cli_is_killed_with_its_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 0.3)
    pid_file = tmp_path / "child.pid"
    script(tmp_path, "claude", f"sleep 30 & echo $! > {pid_file}; wait")
    assert await probe.probe({}, {"PATH": f"{tmp_path}:/usr/bin:/bin"}, str(tmp_path)) == {"claude": None}
    child = int(pid_file.read_text())
    await eventually(lambda: not _alive(child), "the CLI's own children went with it")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
