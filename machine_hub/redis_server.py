"""A private redis-server process: started by `machine-hub dev`, by the tests and by the benchmark.

The Sentinel and Cluster topologies (redis_sentinel.py, redis_cluster.py) are built from it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis

INSTALL_HINT = (
    "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; "
    "macOS: brew install redis) or set REDIS_URL to a running Redis"
)

T = TypeVar("T")

# A primary waits 5 s by default before a full resynchronization, for more replicas to join it.
REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reachable(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Something answers PING at host:port (no auth)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def poll_until(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Call `check` until it returns something other than None or False; TimeoutError after the deadline.

    A check that raises redis.RedisError counts as "not yet": servers refuse, redirect and
    time out while they start, elect and resynchronize.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except redis.RedisError as e:
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}{detail}")
        time.sleep(interval_s)


@dataclass(frozen=True)
class Credentials:
    """A login: an ACL user, or the default user's `requirepass` when `username` is None."""

    password: str
    username: str | None = None


def auth_args(folder: Path, credentials: Credentials | None, acl: str | None) -> tuple[str, ...]:
    """redis-server arguments for a data node of a replicated topology: who may log in (`acl`, the
    text of an ACL file, copied into `folder`; else `requirepass`) and how its replicas log in to it.

    Redis replicates neither ACL users nor the script cache, so every node gets the same file: a
    replica promoted by a failover must already know the users its clients log in as.
    """
    if credentials is None:
        if acl is not None:
            raise ValueError("an ACL file needs the credentials of one of its users (for replication and admin)")
        return ()
    if acl is None and credentials.username not in (None, "default"):
        raise ValueError(f"user {credentials.username!r} needs an ACL file that defines it")
    args: list[str] = []
    if acl is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "users.acl").write_text(acl)
        args += ["--aclfile", str(folder / "users.acl")]
    else:
        args += ["--requirepass", credentials.password]
    args += ["--masterauth", credentials.password]
    if credentials.username:
        args += ["--masteruser", credentials.username]
    return tuple(args)


class RedisServer:
    """One redis-server on 127.0.0.1:<port>, data in `folder`; stop() or kill() ends it.

    `config` is a file given before the arguments (a sentinel needs one it can rewrite);
    `credentials` is what execute() and client() log in with.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        args: tuple[str, ...] = (),
        config: Path | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.args = args
        self.config = config
        self.credentials = credentials
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, folder={self.folder.name})"

    @property
    def url(self) -> str:
        if self.credentials is None:
            return f"redis://127.0.0.1:{self.port}/0"
        user = quote(self.credentials.username or "", safe="")
        return f"redis://{user}:{quote(self.credentials.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def alive(self) -> bool:
        """Running and not paused."""
        return self.process is not None and self.process.poll() is None and not self.paused

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            *([str(self.config)] if self.config else []),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
            *self.args,
        ]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not reachable("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def log_tail(self, chars: int = 500) -> str:
        log = self.folder / "redis.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    @contextmanager
    def client(self, timeout_s: float = 2.0) -> Iterator[Any]:
        """A synchronous redis-py client on a fresh connection, logged in, answers decoded."""
        creds = self.credentials
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=creds.username if creds else None,
            password=creds.password if creds else None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
        )
        try:
            yield client
        finally:
            client.close()

    def execute(self, *args: Any, timeout_s: float = 2.0) -> Any:
        """One command, raw reply (e.g. execute("ACL", "SETUSER", ...))."""
        with self.client(timeout_s) as client:
            return client.execute_command(*args)

    def pause(self) -> None:
        """SIGSTOP: like a hung host or a partition, its sockets stay open but nothing answers."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.paused = False


def kill_all(servers: list[RedisServer]) -> None:
    """SIGKILL every server, even when killing one of them fails; then raise the first failure."""
    errors: list[BaseException] = []
    for server in servers:
        try:
            server.kill()
        except Exception as e:  # e.g. a wait that timed out: still end the others
            errors.append(e)
    if errors:
        raise errors[0]


def config_value(value: str) -> str:
    """`value` quoted for a redis.conf line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
