"""The spawner with real git and real processes: a fake CLI records how it was started."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from core.schemas import AgentName, SpawnRequest, SpawnResult
from core.settings import Settings
from machine_agent.launcher import Launcher
from machine_agent.spawner import Spawner
from tests.waiting import cli_records, eventually, lines

FAKE_CLI = Path(__file__).resolve().parents[1] / "fixtures" / "fake_cli.py"
SETTLE_S = 0.3
JOB = {"job_id": "job-1", "namespace": "team", "machine_id": "box-1"}
COMMAND: dict[AgentName, str] = {
    "claude": "claude",
    "codex": "codex",
    "cursor": "cursor-agent",
    "gemini": "gemini",
    "opencode": "opencode",
}
YOLO_FLAG: dict[AgentName, list[str]] = {
    "claude": ["--dangerously-skip-permissions"],
    "codex": ["--dangerously-bypass-approvals-and-sandbox"],
    "cursor": ["--force"],
    "gemini": ["--yolo"],
    "opencode": [],
}


def _load_fake_cli() -> Any:
    spec = importlib.util.spec_from_file_location("fake_cli", FAKE_CLI)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    _load_fake_cli().install(bin_dir)
    return bin_dir


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def cli_log(tmp_path: Path) -> Path:
    return tmp_path / "cli.jsonl"


@pytest.fixture
def env(tmp_path: Path, fake_bin: Path, user_home: Path, cli_log: Path) -> dict[str, str]:
    """The agent's environment: the fake CLIs first on PATH, git made independent of this machine."""
    return {
        "PATH": os.pathsep.join([str(fake_bin), os.environ.get("PATH", os.defpath)]),
        "HOME": str(user_home),
        "FAKE_CLI_LOG": str(cli_log),
        "FAKE_CLI_LIFETIME": "60",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CEILING_DIRECTORIES": str(tmp_path),
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }


@pytest.fixture
async def launcher() -> AsyncIterator[Launcher]:
    launcher = Launcher()
    yield launcher
    for pid in launcher.live:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        assert await launcher.wait(pid, 5.0) is not None or pid not in launcher.live
    await launcher.close()


MakeSpawner = Callable[..., Spawner]


@pytest.fixture
def make_spawner(tmp_path: Path, launcher: Launcher, env: dict[str, str]) -> MakeSpawner:
    def make(env_extra: dict[str, str] | None = None, **settings: Any) -> Spawner:
        return Spawner(
            Settings(**{"spawn_settle_s": SETTLE_S} | settings),
            home=tmp_path / "mh-home",
            launcher=launcher,
            env=env | (env_extra or {}),
        )

    return make


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> Path:
    repo = tmp_path / "work" / "proj"
    repo.mkdir(parents=True)
    _git(env, "-C", str(repo), "init", "-q")
    (repo / "README").write_text("hello\n")
    _git(env, "-C", str(repo), "add", "README")
    _git(env, "-C", str(repo), "commit", "-q", "-m", "init")
    return repo


def _git(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], env=env, check=True, capture_output=True, text=True)


def _branch_exists(env: dict[str, str], repo: Path, branch: str) -> bool:
    args = ["git", "-C", str(repo), "show-ref", "--verify", "--quiet", f"refs/heads/{branch}"]
    return subprocess.run(args, env=env, check=False).returncode == 0


def _count(path: Path, text: str) -> int:
    return path.read_text(errors="replace").count(text) if path.exists() else 0


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _reaped(pid: int) -> bool:
    """True if `pid` is no child of ours any more, not even a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


async def _file_contains(path: Path, text: str, timeout_s: float = 5.0) -> None:
    await eventually(lambda: _count(path, text) > 0, f"{path} contains {text[:40]!r}", timeout_s)


async def _gone(launcher: Launcher, pid: int, timeout_s: float = 5.0) -> None:
    """Wait until the launcher no longer tracks `pid` and the process was reaped (no zombie)."""
    await eventually(lambda: pid not in launcher.live, f"session {pid} is no longer tracked", timeout_s)
    assert _reaped(pid)


async def _spawn(spawner: Spawner, **request: Any) -> SpawnResult:
    return await spawner.spawn(SpawnRequest(**request), **JOB)


def _real(path: Path) -> str:
    return os.path.realpath(path)


@pytest.mark.parametrize("agent", list(COMMAND))
@pytest.mark.parametrize(("yolo", "model"), [(False, None), (True, "big-model")])
async def test_each_agent_is_launched_with_its_flags_on_a_tty(
    make_spawner: MakeSpawner,
    launcher: Launcher,
    tmp_path: Path,
    cli_log: Path,
    agent: AgentName,
    yolo: bool,
    model: str | None,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    result = await _spawn(make_spawner(), directory=f"  {project}  ", agent=agent, yolo=yolo, model=model)
    assert result.success, result
    assert result.session_id and not result.directory_created and result.worktree is None
    [record] = await cli_records(cli_log)

    expected = list(YOLO_FLAG[agent]) if yolo else []
    if agent == "claude":
        expected += ["--session-id", result.session_id]
    if model:
        expected += ["--model", model]
    assert record["name"] == COMMAND[agent]
    assert record["argv"] == expected
    assert record["stdin_tty"] and record["stdout_tty"]
    assert record["cwd"] == _real(project)
    assert record["env"] == {
        "MACHINE_HUB_SESSION_ID": result.session_id,
        "MACHINE_HUB_JOB_ID": "job-1",
        "MACHINE_HUB_MACHINE_ID": "box-1",
        "MACHINE_HUB_NAMESPACE": "team",
    }
    assert record["term"] == "xterm-256color"
    # Its own process session, so the agent can signal the whole session at once.
    assert record["pgid"] == record["pid"]
    assert record["pid"] in launcher.live


async def test_agents_term_is_kept(make_spawner: MakeSpawner, tmp_path: Path, cli_log: Path) -> None:
    result = await _spawn(make_spawner({"TERM": "screen"}), directory=str(tmp_path), agent="codex")
    assert result.success, result
    [record] = await cli_records(cli_log)
    assert record["term"] == "screen"


async def test_command_override_with_extra_words(
    make_spawner: MakeSpawner, fake_bin: Path, tmp_path: Path, cli_log: Path
) -> None:
    spawner = make_spawner(agent_commands={"gemini": [str(fake_bin / "opencode"), "--profile", "work"]})
    result = await _spawn(spawner, directory=str(tmp_path), agent="gemini", yolo=True)
    assert result.success, result
    [record] = await cli_records(cli_log)
    assert record["name"] == "opencode"
    assert record["argv"] == ["--profile", "work", "--yolo"]


async def test_simple_session_creates_a_missing_directory_under_home(
    make_spawner: MakeSpawner, user_home: Path, cli_log: Path
) -> None:
    spawner = make_spawner()
    result = await _spawn(spawner, directory="code/new/deep", agent="claude")
    assert result.success and result.directory_created, result
    assert (user_home / "code" / "new" / "deep").is_dir()

    result = await _spawn(spawner, directory="~/code/new", agent="codex")
    assert result.success and not result.directory_created, result
    first, second = await cli_records(cli_log, 2)
    assert first["cwd"] == _real(user_home / "code" / "new" / "deep")
    assert second["cwd"] == _real(user_home / "code" / "new")


async def test_tilde_alone_is_the_agents_home(make_spawner: MakeSpawner, user_home: Path, cli_log: Path) -> None:
    result = await _spawn(make_spawner(), directory="~", agent="gemini")
    assert result.success, result
    [record] = await cli_records(cli_log)
    assert record["cwd"] == _real(user_home)


async def test_a_file_is_not_a_directory(make_spawner: MakeSpawner, tmp_path: Path, cli_log: Path) -> None:
    (tmp_path / "file").write_text("x")
    spawner = make_spawner()
    result = await _spawn(spawner, directory=str(tmp_path / "file"), agent="claude")
    assert (result.success, result.code) == (False, "not_a_directory"), result

    result = await _spawn(spawner, directory=str(tmp_path / "file" / "below"), agent="claude")
    assert (result.success, result.code) == (False, "directory_create_failed"), result
    assert "a file is in the way" in (result.error or "")
    assert not lines(cli_log)


async def test_worktree_session(make_spawner: MakeSpawner, repo: Path, env: dict[str, str], cli_log: Path) -> None:
    (repo / "sub").mkdir()
    result = await _spawn(
        make_spawner(), directory=str(repo / "sub"), session_type="worktree", worktree_name=" Fix Login Bug! "
    )
    assert result.success, result
    path = repo.parent / "proj-worktrees" / "fix-login-bug"
    assert result.worktree is not None
    assert (result.worktree.path, result.worktree.branch, result.worktree.base_path) == (
        str(path),
        "mh-fix-login-bug",
        str(repo),
    )
    assert (path / "README").read_text() == "hello\n"
    assert _branch_exists(env, repo, "mh-fix-login-bug")
    [record] = await cli_records(cli_log)
    assert record["cwd"] == _real(path)
    assert record["env"]["MACHINE_HUB_WORKTREE_PATH"] == str(path)
    assert record["env"]["MACHINE_HUB_WORKTREE_BRANCH"] == "mh-fix-login-bug"
    assert record["env"]["MACHINE_HUB_WORKTREE_BASE_PATH"] == str(repo)
    assert record["env"]["MACHINE_HUB_SESSION_ID"] == result.session_id


async def test_worktree_collisions_get_a_suffix(make_spawner: MakeSpawner, repo: Path, env: dict[str, str]) -> None:
    spawner = make_spawner(worktree_branch_prefix="wt/")
    first = await _spawn(spawner, directory=str(repo), session_type="worktree", worktree_name="feature")
    second = await _spawn(spawner, directory=str(repo), session_type="worktree", worktree_name="feature")
    # A branch alone, without a folder, is a collision too.
    _git(env, "-C", str(repo), "branch", "wt/other")
    third = await _spawn(spawner, directory=str(repo), session_type="worktree", worktree_name="other")
    assert first.worktree and second.worktree and third.worktree, (first, second, third)
    assert first.worktree.branch == "wt/feature"
    assert re.fullmatch(r"wt/feature-[0-9a-f]{4}", second.worktree.branch)
    assert second.worktree.path == str(repo.parent / "proj-worktrees" / second.worktree.branch.removeprefix("wt/"))
    assert re.fullmatch(r"wt/other-[0-9a-f]{4}", third.worktree.branch)
    for result in (first, second, third):
        assert result.worktree and _is_dir(result.worktree.path)
        assert _branch_exists(env, repo, result.worktree.branch)


async def test_worktree_needs_an_existing_git_directory(
    make_spawner: MakeSpawner, tmp_path: Path, cli_log: Path
) -> None:
    spawner = make_spawner()
    missing = await _spawn(spawner, directory=str(tmp_path / "nope"), session_type="worktree", worktree_name="x")
    assert (missing.success, missing.code) == (False, "directory_not_found"), missing
    assert not (tmp_path / "nope").exists()

    (tmp_path / "plain").mkdir()
    plain = await _spawn(spawner, directory=str(tmp_path / "plain"), session_type="worktree", worktree_name="x")
    assert (plain.success, plain.code) == (False, "not_a_git_repo"), plain
    assert "not a git repository" in (plain.error or "")
    assert not lines(cli_log)


async def test_worktree_name_without_letters_fails(make_spawner: MakeSpawner, repo: Path) -> None:
    result = await _spawn(make_spawner(), directory=str(repo), session_type="worktree", worktree_name="!!!")
    assert (result.success, result.code) == (False, "worktree_failed"), result
    assert not (repo.parent / "proj-worktrees").exists()


async def test_cli_that_exits_at_once(make_spawner: MakeSpawner, tmp_path: Path) -> None:
    spawner = make_spawner({"FAKE_CLI_EXIT": "3", "FAKE_CLI_STDERR": "error: no API key configured\n"})
    result = await _spawn(spawner, directory=str(tmp_path), agent="claude")
    assert (result.success, result.code) == (False, "spawn_failed"), result
    assert result.error == "claude exited at once with status 3: error: no API key configured"


async def test_cli_that_exits_at_once_reports_terminal_output_without_stderr(
    make_spawner: MakeSpawner, tmp_path: Path
) -> None:
    spawner = make_spawner({"FAKE_CLI_EXIT": "1", "FAKE_CLI_STDOUT": "\x1b[31mplease log in first\x1b[0m\r\n"})
    result = await _spawn(spawner, directory=str(tmp_path), agent="gemini")
    assert (result.success, result.code) == (False, "spawn_failed"), result
    assert result.error == "gemini exited at once with status 1: please log in first"


async def test_cli_killed_by_a_signal(make_spawner: MakeSpawner, tmp_path: Path) -> None:
    spawner = make_spawner(agent_commands={"opencode": ["sh", "-c", "kill -KILL $$"]})
    result = await _spawn(spawner, directory=str(tmp_path), agent="opencode")
    assert (result.success, result.code) == (False, "spawn_failed"), result
    assert "with signal 9 (SIGKILL)" in (result.error or "")


async def test_failed_start_removes_the_worktree(make_spawner: MakeSpawner, repo: Path, env: dict[str, str]) -> None:
    spawner = make_spawner({"FAKE_CLI_EXIT": "2", "FAKE_CLI_STDERR": "codex: unsupported model"})
    result = await _spawn(spawner, directory=str(repo), agent="codex", session_type="worktree", worktree_name="doomed")
    assert (result.success, result.code) == (False, "spawn_failed"), result
    assert "status 2" in (result.error or "") and "codex: unsupported model" in (result.error or "")
    assert not (repo.parent / "proj-worktrees" / "doomed").exists()
    assert not _branch_exists(env, repo, "mh-doomed")
    listed = _git(env, "-C", str(repo), "worktree", "list", "--porcelain").stdout
    assert listed.count("worktree ") == 1


async def test_cli_not_on_path(make_spawner: MakeSpawner, user_home: Path) -> None:
    spawner = make_spawner({"PATH": "/nonexistent"})
    result = await _spawn(spawner, directory="~/fresh", agent="cursor")
    assert (result.success, result.code) == (False, "agent_not_installed"), result
    assert "cursor-agent" in (result.error or "") and "MACHINE_HUB_AGENT_COMMANDS" in (result.error or "")
    # Nothing is created for a session that cannot start.
    assert not (user_home / "fresh").exists()


async def test_roots_restrict_the_directory(make_spawner: MakeSpawner, user_home: Path, tmp_path: Path) -> None:
    allowed = user_home / "allowed"
    allowed.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    spawner = make_spawner(roots=("~/allowed",))

    for directory in ("~/other", "~/allowed/../other", str(tmp_path / "elsewhere"), "~/allowed/escape", "~"):
        result = await _spawn(spawner, directory=directory)
        assert (result.success, result.code) == (False, "directory_outside_roots"), (directory, result)
    assert not (user_home / "other").exists()

    for directory in ("~/allowed", "allowed/new"):
        result = await _spawn(spawner, directory=directory)
        assert result.success, (directory, result)


async def test_output_is_logged_under_home_and_kept_drained(
    make_spawner: MakeSpawner, tmp_path: Path, cli_log: Path
) -> None:
    # Far more than a pty buffer holds: the session blocks unless the agent keeps reading.
    line, repeat = "all work and no play\n", 20000
    extra = {
        "FAKE_CLI_STDOUT": line,
        "FAKE_CLI_STDOUT_REPEAT": str(repeat),
        "FAKE_CLI_STDOUT_DELAY": str(SETTLE_S + 0.2),  # printed after the spawn was answered
        "FAKE_CLI_STDERR": "a warning\n",
    }
    result = await _spawn(make_spawner(extra), directory=str(tmp_path), agent="claude")
    assert result.success, result
    session_dir = tmp_path / "mh-home" / "sessions" / str(result.session_id)
    drained = lambda: _count(session_dir / "output.log", "all work and no play") >= repeat  # noqa: E731
    await eventually(drained, "the session's whole output is drained", 10.0)
    await _file_contains(session_dir / "stderr.log", "a warning")
    [record] = await cli_records(cli_log)
    assert record["env"]["MACHINE_HUB_SESSION_ID"] == result.session_id


async def test_session_end_is_reaped(
    make_spawner: MakeSpawner, launcher: Launcher, tmp_path: Path, cli_log: Path
) -> None:
    result = await _spawn(make_spawner(), directory=str(tmp_path), agent="claude")
    assert result.success, result
    [record] = await cli_records(cli_log)
    os.killpg(record["pid"], signal.SIGTERM)
    assert await launcher.wait(record["pid"], 5.0) == -signal.SIGTERM
    await _gone(launcher, record["pid"])


async def test_cancelled_spawn_kills_the_session_and_removes_its_worktree(
    make_spawner: MakeSpawner, launcher: Launcher, repo: Path, env: dict[str, str], cli_log: Path
) -> None:
    spawner = make_spawner(spawn_settle_s=30.0)
    request = SpawnRequest(directory=str(repo), session_type="worktree", worktree_name="cancelled")
    task = asyncio.create_task(spawner.spawn(request, **JOB))
    [record] = await cli_records(cli_log)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _gone(launcher, record["pid"])
    assert not (repo.parent / "proj-worktrees" / "cancelled").exists()
    assert not _branch_exists(env, repo, "mh-cancelled")


async def test_a_repository_whose_worktree_folder_is_outside_the_roots_is_refused(
    make_spawner: MakeSpawner, repo: Path, tmp_path: Path
) -> None:
    spawner = make_spawner(roots=(str(repo),))
    result = await _spawn(spawner, directory=str(repo), session_type="worktree", worktree_name="x")
    assert (result.success, result.code) == (False, "directory_outside_roots"), result
    assert not (tmp_path / "work" / "proj-worktrees").exists()


async def test_sessions_do_not_inherit_the_agents_secrets(
    make_spawner: MakeSpawner, tmp_path: Path, cli_log: Path
) -> None:
    spawner = make_spawner({"REDIS_URL": "redis://:pw@r/0", "CLI_API_TOKEN": "secret", "KEEP_ME": "1"})
    result = await _spawn(spawner, directory=str(tmp_path))
    assert result.success
    (record,) = await cli_records(cli_log)
    assert "KEEP_ME" in record["env_names"]
    assert "REDIS_URL" not in record["env_names"] and "CLI_API_TOKEN" not in record["env_names"]
