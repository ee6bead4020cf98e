"""Carries out one spawn job: checks the directory, makes a worktree if asked, starts the CLI.

Expected failures come back as `SpawnResult(success=False, code=...)` with a readable error;
only unexpected exceptions propagate.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from core.schemas import SpawnRequest, SpawnResult, Worktree
from core.settings import Settings
from machine_agent.commands import base_command, build_argv, resolve_executable
from machine_agent.launches import Exited, SessionLauncher
from machine_agent.paths import inside, real_roots, resolve
from machine_agent.sessions import SessionRecord, SessionStore, process_start
from machine_agent.worktrees import (
    GitWorktree,
    NotAGitRepo,
    WorktreeFailed,
    create_worktree,
    remove_worktree,
    repo_root,
    worktrees_root,
)

log = logging.getLogger(__name__)
# What the agent holds for itself: a session that had any of these could act as the agent.
AGENT_PREFIXES = ("MACHINE_HUB_", "REDIS_")
AGENT_SECRETS = frozenset({"CLI_API_TOKEN"})


def session_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment less everything it holds for itself (settings and credentials)."""
    return {k: v for k, v in env.items() if k not in AGENT_SECRETS and not k.startswith(AGENT_PREFIXES)}


class SpawnFailure(Exception):
    """An expected failure; becomes the `code` and `error` of the result."""

    def __init__(self, code: str, error: str) -> None:
        super().__init__(error)
        self.code = code
        self.error = error


class Spawner:
    """Starts AI coding CLI sessions on this machine; `env` is what the sessions inherit."""

    def __init__(
        self,
        settings: Settings,
        *,
        home: Path,
        launcher: SessionLauncher,
        env: Mapping[str, str] | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self._settings = settings
        self._home = home
        self._launcher = launcher
        self._sessions = sessions
        self._env = session_environment(os.environ if env is None else env)
        self._user_home = self._env.get("HOME") or os.path.expanduser("~")
        self._roots = real_roots(settings.roots, self._user_home)

    async def spawn(
        self, request: SpawnRequest, *, job_id: str, namespace: str, machine_id: str, session_id: str = ""
    ) -> SpawnResult:
        """Start the session; `session_id` lets the caller journal the id before the start."""
        session_id = session_id or str(uuid.uuid4())
        try:
            return await self._spawn(
                request, job_id=job_id, namespace=namespace, machine_id=machine_id, session_id=session_id
            )
        except SpawnFailure as failure:
            log.info("spawn job %s failed (%s): %s", job_id, failure.code, failure.error)
            return SpawnResult(success=False, error=failure.error, code=failure.code)

    async def _spawn(
        self, request: SpawnRequest, *, job_id: str, namespace: str, machine_id: str, session_id: str
    ) -> SpawnResult:
        directory = self._directory(request.directory)
        env = self._env | {
            "MACHINE_HUB_SESSION_ID": session_id,
            "MACHINE_HUB_JOB_ID": job_id,
            "MACHINE_HUB_MACHINE_ID": machine_id,
            "MACHINE_HUB_NAMESPACE": namespace,
        }
        env.setdefault("TERM", "xterm-256color")
        command = base_command(request.agent, self._settings.agent_commands)
        executable = resolve_executable(command[0], env)
        if executable is None:
            raise SpawnFailure(
                "agent_not_installed",
                f"{command[0]} (the {request.agent} CLI) is not installed on this machine: install it or set "
                f"MACHINE_HUB_AGENT_COMMANDS to its command",
            )
        argv = build_argv(
            request.agent,
            yolo=request.yolo,
            model=request.model,
            session_id=session_id,
            overrides=self._settings.agent_commands,
            prompt=request.prompt,
        )
        if request.session_type == "simple":
            created = _ensure_directory(directory)
            pid = await self._launch(argv, executable, directory, env, session_id)
            self._record(request, job_id, session_id, pid, directory, None)
            return SpawnResult(success=True, session_id=session_id, directory_created=created)

        worktree = await self._worktree(directory, request.worktree_name or "", reuse=request.reuse_worktree)
        env |= {
            "MACHINE_HUB_WORKTREE_PATH": str(worktree.path),
            "MACHINE_HUB_WORKTREE_BRANCH": worktree.branch,
            "MACHINE_HUB_WORKTREE_BASE_PATH": str(worktree.base_path),
        }
        try:
            pid = await self._launch(argv, executable, worktree.path, env, session_id)
        except BaseException:
            # The session never started, so nobody will use or clean up a worktree made for it.
            if not worktree.reused:
                await remove_worktree(worktree, env=self._env)
            raise
        wire = Worktree(path=str(worktree.path), branch=worktree.branch, base_path=str(worktree.base_path))
        self._record(request, job_id, session_id, pid, worktree.path, wire)
        return SpawnResult(success=True, session_id=session_id, worktree=wire)

    def _record(
        self, request: SpawnRequest, job_id: str, session_id: str, pid: int, cwd: Path, worktree: Worktree | None
    ) -> None:
        if self._sessions is None:
            return
        record = SessionRecord(
            session_id=session_id,
            job_id=job_id,
            pid=pid,
            process_start=process_start(pid),
            agent=request.agent,
            directory=str(cwd),
            worktree=worktree,
            started_at=int(time.time() * 1000),
            launcher="tmux" if self._launcher.name == "tmux" else "pty",
        )
        self._sessions.add(record)

    def _directory(self, raw: str) -> Path:
        """The absolute, normalized directory the request names, checked against the roots."""
        text = raw.strip()
        if not text:
            raise SpawnFailure("directory_not_found", "no directory was given")
        path = Path(resolve(text, self._user_home))
        self._require_inside_roots(path)
        return path

    def _require_inside_roots(self, path: Path) -> None:
        if not inside(str(path), self._roots):
            raise SpawnFailure(
                "directory_outside_roots",
                f"{path} is outside the directories this machine allows sessions in: {', '.join(self._roots)}",
            )

    async def _worktree(self, directory: Path, name: str, *, reuse: bool) -> GitWorktree:
        _require_directory(directory)
        try:
            # The worktree goes beside the repository, which may lie outside the allowed roots.
            self._require_inside_roots(worktrees_root(await repo_root(directory, env=self._env)))
            prefix = self._settings.worktree_branch_prefix
            return await create_worktree(directory, name, branch_prefix=prefix, reuse=reuse, env=self._env)
        except NotAGitRepo as exc:
            raise SpawnFailure("not_a_git_repo", str(exc)) from exc
        except WorktreeFailed as exc:
            raise SpawnFailure("worktree_failed", str(exc)) from exc

    async def _launch(
        self, argv: list[str], executable: str, cwd: Path, env: Mapping[str, str], session_id: str
    ) -> int:
        """Start the session; its pid, or SpawnFailure."""
        name = argv[0]
        try:
            outcome = await self._launcher.launch(
                argv,
                cwd=cwd,
                env=env,
                log_dir=self._home / "sessions" / session_id,
                settle_s=self._settings.spawn_settle_s,
                executable=executable,
                session_id=session_id,
            )
        except OSError as exc:
            raise SpawnFailure("spawn_failed", f"could not start {name}: {exc.strerror or exc}") from exc
        if isinstance(outcome, Exited):
            detail = outcome.tail or "it printed nothing"
            raise SpawnFailure("spawn_failed", f"{name} exited at once with {outcome.status}: {detail}")
        log.info("session %s started: %s (pid %s) in %s", session_id, name, outcome.pid, cwd)
        return outcome.pid


def _ensure_directory(directory: Path) -> bool:
    """Make `directory` if it is missing; True if it was made."""
    if directory.is_dir():
        return False
    if directory.exists():
        raise SpawnFailure("not_a_directory", f"{directory} exists but is not a directory")
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        # Created meanwhile by someone else, or a file (or dangling link) blocks the way.
        if directory.is_dir():
            return False
        raise SpawnFailure(
            "directory_create_failed", f"cannot create {directory}: something else is in the way"
        ) from None
    except NotADirectoryError:
        raise SpawnFailure(
            "directory_create_failed", f"cannot create {directory}: a file is in the way of one of its parents"
        ) from None
    except PermissionError:
        raise SpawnFailure("directory_create_failed", f"cannot create {directory}: permission denied") from None
    except OSError as exc:
        raise SpawnFailure("directory_create_failed", f"cannot create {directory}: {exc.strerror or exc}") from None
    return True


def _require_directory(directory: Path) -> None:
    if not directory.exists():
        raise SpawnFailure("directory_not_found", f"{directory} does not exist")
    if not directory.is_dir():
        raise SpawnFailure("not_a_directory", f"{directory} exists but is not a directory")
