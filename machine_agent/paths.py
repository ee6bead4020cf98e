"""Path checks: does each path exist on this machine (any file type, symlinks followed)?"""

from __future__ import annotations

import os
from collections.abc import Sequence


def resolve(path: str, home: str) -> str:
    """`~` is the agent user's home and a relative path is taken from that home."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        path = os.path.expanduser(path)  # ~user, or left as it is when there is no such user
    return os.path.normpath(os.path.join(home, path))


def inside(path: str, roots: Sequence[str]) -> bool:
    """True when `path` (symlinks resolved) lies in one of `roots`; no roots means everywhere."""
    if not roots:
        return True
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def real_roots(roots: Sequence[str], home: str) -> tuple[str, ...]:
    return tuple(os.path.realpath(resolve(root, home)) for root in roots)


def check_paths(paths: Sequence[str], *, home: str, roots: Sequence[str]) -> dict[str, bool]:
    """Blocking (stat calls); run it in a thread. `roots` must come from `real_roots`."""
    result: dict[str, bool] = {}
    for path in paths:
        full = resolve(path, home)
        result[path] = inside(full, roots) and os.path.exists(full)
    return result
