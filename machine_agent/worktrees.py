"""Git worktrees for worktree sessions, made as HAPI makes them, with the plain git CLI.

A worktree of repository `<dir>/<repo>` goes to `<dir>/<repo>-worktrees/<slug>` on a new branch
`<prefix><slug>` started from the current HEAD.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.names import worktree_slug

log = logging.getLogger(__name__)

ATTEMPTS = 5
# A post-checkout hook could hang forever; the hub gives up on the spawn long before this.
GIT_TIMEOUT_S = 60.0


class WorktreeError(Exception):
    """A worktree could not be made; the message is readable and carries git's stderr."""


class NotAGitRepo(WorktreeError):
    pass


class WorktreeFailed(WorktreeError):
    pass


@dataclass(frozen=True)
class GitWorktree:
    path: Path
    branch: str
    base_path: Path  # the root of the repository the worktree belongs to
    reused: bool = False  # an existing worktree: never removed by us


@dataclass(frozen=True)
class GitResult:
    code: int
    out: str
    err: str

    @property
    def reason(self) -> str:
        """What went wrong, in git's words when it said anything."""
        return self.err or self.out or f"git exited with status {self.code}"


async def git(*args: str, env: Mapping[str, str] | None = None) -> GitResult:
    """Run git with `args` (an argv list, no shell) and collect its exit code and output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError:
        return GitResult(127, "", "git is not installed (not found on PATH)")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return GitResult(-1, "", f"git {' '.join(args)} did not finish within {GIT_TIMEOUT_S:.0f}s")
    return GitResult(proc.returncode or 0, _text(out), _text(err))


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").strip()


async def repo_root(directory: Path, *, env: Mapping[str, str] | None = None) -> Path:
    """Top folder of the git repository holding `directory`; NotAGitRepo if there is none."""
    result = await git("-C", str(directory), "rev-parse", "--show-toplevel", env=env)
    if result.code != 0 or not result.out:
        raise NotAGitRepo(f"{directory} is not in a git repository: {result.reason}")
    return Path(result.out)


def worktrees_root(repo: Path) -> Path:
    return repo.parent / f"{repo.name}-worktrees"


async def create_worktree(
    directory: Path,
    name: str,
    *,
    branch_prefix: str,
    reuse: bool = False,
    env: Mapping[str, str] | None = None,
) -> GitWorktree:
    """Make a worktree named after `name` for the repository holding `directory`.

    With `reuse`, a worktree of that repository already at the name's path is used as it is.
    """
    slug = worktree_slug(name)
    if not slug:
        raise WorktreeFailed(f"worktree name {name!r} has no letters or digits to name a worktree with")
    repo = await repo_root(directory, env=env)
    root = worktrees_root(repo)
    if reuse:
        existing = (await list_worktrees(repo, env=env)).get(root / slug)
        if existing is not None:
            return existing
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorktreeFailed(f"cannot create {root}: {exc.strerror or exc}") from exc
    candidate = slug
    for _ in range(ATTEMPTS):
        path, branch = root / candidate, f"{branch_prefix}{candidate}"
        if not path.exists() and not await _branch_exists(repo, branch, env):
            break
        candidate = f"{slug}-{secrets.token_hex(2)}"
    else:
        raise WorktreeFailed(f"no free worktree name for {slug!r} in {root} after {ATTEMPTS} attempts")
    result = await git("-C", str(repo), "worktree", "add", "-b", branch, "--", str(path), env=env)
    if result.code != 0:
        raise WorktreeFailed(f"git worktree add failed: {result.reason}")
    return GitWorktree(path=path, branch=branch, base_path=repo)


async def list_worktrees(repo: Path, *, env: Mapping[str, str] | None = None) -> dict[Path, GitWorktree]:
    """The repository's linked worktrees by path, from `git worktree list --porcelain`."""
    result = await git("-C", str(repo), "worktree", "list", "--porcelain", env=env)
    found: dict[Path, GitWorktree] = {}
    for block in result.out.split("\n\n") if result.code == 0 else []:
        fields = dict(line.partition(" ")[::2] for line in block.splitlines())
        if "worktree" in fields and fields.get("branch", "").startswith("refs/heads/"):
            path = Path(fields["worktree"])
            found[path] = GitWorktree(path, fields["branch"].removeprefix("refs/heads/"), repo, reused=True)
    return found


async def remove_worktree(worktree: GitWorktree, *, env: Mapping[str, str] | None = None) -> bool:
    """Remove the worktree and delete its branch; True if both went. Never raises for git failures."""
    repo = str(worktree.base_path)
    removed = await git("-C", repo, "worktree", "remove", "--force", "--", str(worktree.path), env=env)
    if removed.code != 0:
        log.warning("could not remove worktree %s: %s", worktree.path, removed.reason)
        # git refuses to delete a branch checked out in a worktree it still lists; forget vanished ones.
        await git("-C", repo, "worktree", "prune", env=env)
    deleted = await git("-C", repo, "branch", "-D", "--", worktree.branch, env=env)
    if deleted.code != 0:
        log.warning("could not delete branch %s in %s: %s", worktree.branch, repo, deleted.reason)
    return removed.code == 0 and deleted.code == 0


async def _branch_exists(repo: Path, branch: str, env: Mapping[str, str] | None) -> bool:
    result = await git("-C", str(repo), "show-ref", "--verify", "--quiet", "--", f"refs/heads/{branch}", env=env)
    return result.code == 0
