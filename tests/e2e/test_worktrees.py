"""Worktree sessions through the API: a real git repository, real `git worktree`, fake CLIs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.e2e.harness import Stack

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": "/usr/bin:/bin",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout


def make_repo(path: Path, *, commit: bool = True) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    if commit:
        (path / "README").write_text("hi\n")
        git(path, "add", "README")
        git(path, "commit", "-q", "-m", "first")
    return path


def spawn(stack: Stack, machine_id: str, body: dict[str, object]) -> dict[str, object]:
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"sessionType": "worktree", **body},
        timeout=15,
    )
    assert r.status_code == 200, r.text
    answer: dict[str, object] = r.json()
    return answer


@pytest.fixture(scope="module")
def worktree_agent(stack: Stack) -> str:
    stack.start_agent("wt-agent")
    return "wt-agent"


def test_worktree_session_runs_in_a_new_worktree(stack: Stack, worktree_agent: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app")
    (repo / "sub").mkdir()
    answer = spawn(
        stack, worktree_agent, {"directory": str(repo / "sub"), "worktreeName": "Fix Login!", "agent": "codex"}
    )
    assert answer["success"] is True, answer
    expected = tmp_path / "app-worktrees" / "fix-login"
    assert answer["worktree"] == {"path": str(expected), "branch": "mh-fix-login", "basePath": str(repo)}
    assert (expected / "README").exists()
    assert "mh-fix-login" in git(repo, "branch", "--list")
    launch = stack.launched(str(answer["sessionId"]))
    assert launch["cwd"] == str(expected)
    assert launch["env"]["MACHINE_HUB_WORKTREE_PATH"] == str(expected)
    assert launch["env"]["MACHINE_HUB_WORKTREE_BRANCH"] == "mh-fix-login"
    assert launch["env"]["MACHINE_HUB_WORKTREE_BASE_PATH"] == str(repo)

    again = spawn(stack, worktree_agent, {"directory": str(repo), "worktreeName": "fix login"})
    assert again["success"] is True
    worktree = again["worktree"]
    assert isinstance(worktree, dict)
    assert worktree["path"] != str(expected) and str(worktree["path"]).startswith(f"{expected}-")
    assert str(worktree["branch"]).startswith("mh-fix-login-")


@pytest.mark.parametrize(
    ("setup", "code"),
    [("missing", "directory_not_found"), ("plain", "not_a_git_repo"), ("empty-repo", "worktree_failed")],
)
def test_worktree_failures(stack: Stack, worktree_agent: str, tmp_path: Path, setup: str, code: str) -> None:
    target = tmp_path / "target"
    if setup == "plain":
        target.mkdir()
    elif setup == "empty-repo":
        make_repo(target, commit=False)
    answer = spawn(stack, worktree_agent, {"directory": str(target), "worktreeName": "x"})
    assert answer["success"] is False and answer["code"] == code, answer
    assert answer["jobId"]
    if setup == "missing":
        assert not target.exists(), "a worktree session never creates its directory"


def test_failed_session_removes_its_worktree(stack: Stack, tmp_path: Path) -> None:
    stack.start_agent("wt-failing", FAKE_CLI_EXIT="2", FAKE_CLI_STDERR="cannot start")
    repo = make_repo(tmp_path / "app")
    answer = spawn(stack, "wt-failing", {"directory": str(repo), "worktreeName": "doomed"})
    assert answer["success"] is False and answer["code"] == "spawn_failed"
    assert "cannot start" in str(answer["error"])
    assert not (tmp_path / "app-worktrees" / "doomed").exists()
    assert "mh-doomed" not in git(repo, "branch", "--list")
    assert str(tmp_path / "app-worktrees") not in git(repo, "worktree", "list")


def test_reuse_worktree_runs_in_the_existing_worktree(stack: Stack, worktree_agent: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app")
    first = spawn(stack, worktree_agent, {"directory": str(repo), "worktreeName": "feature"})
    reused = spawn(stack, worktree_agent, {"directory": str(repo), "worktreeName": "Feature", "reuseWorktree": True})
    assert reused["success"] is True, reused
    assert reused["worktree"] == first["worktree"]
    assert stack.launched(str(reused["sessionId"]))["cwd"] == str(tmp_path / "app-worktrees" / "feature")
    fresh = spawn(stack, worktree_agent, {"directory": str(repo), "worktreeName": "feature"})
    assert fresh["worktree"] != first["worktree"], "without reuseWorktree a taken name gets a suffix"
