"""Directory jobs: the sub-folders of one folder, for a person picking where a session runs.

Read-only, like path checks: `~` and relative paths as machine_agent.paths takes them, and only
inside the agent's roots when it has any. A symlink to a folder is listed (marked) when it leads
into the roots; one that leads out of them is not followed, so it is left out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from core.machine_schemas import MAX_DIRECTORY_ENTRIES, DirectoryEntry, DirectoryResult
from machine_agent.paths import inside, resolve


def list_directory(
    raw: str, *, hidden: bool, home: str, roots: Sequence[str], limit: int = MAX_DIRECTORY_ENTRIES
) -> DirectoryResult:
    """Blocking (a scandir and a stat per link); run it in a thread. `roots` from `real_roots`."""
    path = resolve(raw.strip(), home)
    if not inside(path, roots):
        return DirectoryResult(
            path=path,
            error=f"{path} is outside the directories this machine allows: {', '.join(roots)}",
            code="directory_outside_roots",
        )
    try:
        with os.scandir(path) as scan:
            entries = list(scan)
    except FileNotFoundError:
        return DirectoryResult(path=path, error=f"{path} does not exist", code="directory_not_found")
    except NotADirectoryError:
        return DirectoryResult(path=path, error=f"{path} exists but is not a directory", code="not_a_directory")
    except OSError as exc:
        return DirectoryResult(
            path=path, error=f"cannot read {path}: {(exc.strerror or str(exc)).lower()}", code="directory_unreadable"
        )
    folders: list[DirectoryEntry] = []
    for entry in entries:
        if entry.name.startswith(".") and not hidden:
            continue
        try:
            if entry.is_symlink():
                if inside(entry.path, roots) and os.path.isdir(entry.path):
                    folders.append(DirectoryEntry(name=entry.name, path=entry.path, symlink=True))
            elif entry.is_dir(follow_symlinks=False):
                folders.append(DirectoryEntry(name=entry.name, path=entry.path))
        except OSError:
            continue  # gone meanwhile, or unreadable: not a folder anyone can open
    folders.sort(key=lambda e: (e.name.casefold(), e.name))
    return DirectoryResult(path=path, entries=folders[:limit], truncated=len(folders) > limit)
