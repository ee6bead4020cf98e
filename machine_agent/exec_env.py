"""Becomes a session's CLI inside a tmux pane, with exactly the environment the agent chose.

Run as `python -I exec_env.py SPEC STDERR -- ARGV...`: SPEC is a 0600 JSON file {"env", "cwd",
"executable"} that is deleted once read, so no environment value ever appears on a command line.
Only the standard library is used, so it runs as a plain script without the package on sys.path.
"""

from __future__ import annotations

import errno
import json
import os
import sys

USAGE = "usage: exec_env.py SPEC STDERR -- ARGV..."
# As in POSIX shells: 127 when the command was not found, 126 when it could not be run.
NOT_FOUND, CANNOT_RUN, BAD_SPEC = 127, 126, 2


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"machine-hub: {message}\n")
    sys.stderr.flush()
    return status


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        return _fail(USAGE, BAD_SPEC)
    spec_path, stderr_path, argv = args[0], args[1], args[3:]
    # First, so that every later failure lands in the session's stderr log, where the agent looks.
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        return _fail(f"cannot open {stderr_path}: {exc.strerror}", BAD_SPEC)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
        env = {str(k): str(v) for k, v in spec["env"].items()}
        cwd, executable = str(spec["cwd"]), spec.get("executable")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        return _fail(f"cannot read the session spec {spec_path}: {exc}", BAD_SPEC)
    finally:
        # The spec can hold secrets; it is of no use once read, or if it cannot be read.
        try:
            os.unlink(spec_path)
        except OSError:
            pass
    try:
        os.chdir(cwd)
    except OSError as exc:
        return _fail(f"cannot enter {cwd}: {exc.strerror}", CANNOT_RUN)
    try:
        if executable:
            os.execve(str(executable), argv, env)
        else:
            os.execvpe(argv[0], argv, env)  # searches the PATH of `env`, not ours
    except OSError as exc:
        status = NOT_FOUND if exc.errno == errno.ENOENT else CANNOT_RUN
        return _fail(f"cannot start {argv[0]}: {exc.strerror}", status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
