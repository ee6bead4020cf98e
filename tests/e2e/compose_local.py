"""docker-compose.yml's services (with an override file merged in, as `docker compose -f ... -f ...`
merges it) as local processes, with the commands and environment the files give them.

Each named volume becomes a folder; a service sees a volume where compose mounts it, so every path
a command or variable names under a mount point is rewritten to that folder. The Redis hosts (the
services that run a Redis image) become 127.0.0.1, each port of each a free port of its own, in
`host:port`, in `host port` (Redis config lines) and in the service's own `--port`/`--tls-port`.
The Redis image's docker-entrypoint.sh, which only drops root to the redis user, is left out.
Nothing else is changed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from machine_hub.redis_server import free_port

ROOT = Path(__file__).parent.parent.parent


def merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """Compose's merge of an override file, for the keys these files use: mappings key by key,
    a service's `volumes` by mount point and `ports` as a union; `command`, `entrypoint` and every
    other list or value are replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value, (*path, key)) if key in base else value
        return out
    if len(path) == 3 and path[0] == "services" and path[2] == "volumes":
        by_target = {spec.split(":")[1]: spec for spec in [*base, *override]}
        return list(by_target.values())
    if len(path) == 3 and path[0] == "services" and path[2] == "ports":
        return list(dict.fromkeys([*base, *override]))
    return override


def load(*files: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for file in files:
        config = merge(config, yaml.safe_load(file.read_text()))
    return config


COMPOSE: dict[str, Any] = load(ROOT / "docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]


def expand(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} substitution, and $$ for a literal $."""
    text = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", text)
    return text.replace("$$", "$")


class LocalCompose:
    def __init__(self, tmp: Path, base_env: dict[str, str], services: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.base_env = base_env
        self.services = SERVICES if services is None else services
        self.hosts = sorted(
            (n for n, s in self.services.items() if str(s.get("image", "")).startswith("redis")), key=len
        )
        self.ports: dict[tuple[str, int], int] = {}
        # The one bin folder for the venv's commands (`machine-hub`, as sh -c scripts call it).
        self.bin = str(Path(sys.executable).parent)

    def local_port(self, host: str, port: int) -> int:
        """The free port that stands for `port` of the Redis host `host`."""
        return self.ports.setdefault((host, port), free_port())

    @property
    def port(self) -> int:
        return self.local_port("redis", 6379)

    @property
    def tls_port(self) -> int:
        return self.local_port("redis", 6380)

    def volume(self, name: str) -> Path:
        folder = self.tmp / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def root(self, service: str) -> Path:
        """The service's filesystem as far as its volumes go: each mount point a link to its folder."""
        root = self.tmp / "roots" / service
        for spec in self.services[service].get("volumes", []):
            source, target = spec.split(":")[:2]
            if source.startswith("."):
                continue
            link = root / target.lstrip("/")
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(self.volume(source), target_is_directory=True)
        return root

    def local(self, service: str, text: str) -> str:
        root = self.root(service)
        volumes = self.services[service].get("volumes", [])
        tops = {spec.split(":")[1].split("/")[1] for spec in volumes if spec[0] != "."}
        for top in sorted(tops):
            text = re.sub(rf"(?<![\w/.])/{re.escape(top)}(?=/|\b|$)", f"{root}/{top}", text)
        text = text.replace("docker-entrypoint.sh redis-server", "redis-server")
        if service in self.hosts:
            own = r"(--(?:tls-)?port)(\s+)([1-9]\d*)"
            text = re.sub(own, lambda m: f"{m[1]}{m[2]}{self.local_port(service, int(m[3]))}", text)
        names = "|".join(re.escape(h) for h in reversed(self.hosts))
        if not names:
            return text
        with_port = rf"(?<![\w.-])({names})([: ])(\d+)\b"
        text = re.sub(with_port, lambda m: f"127.0.0.1{m[2]}{self.local_port(m[1], int(m[3]))}", text)
        return re.sub(rf"(?<![\w.\-/~])({names})(?![\w.:-])", "127.0.0.1", text)  # not a scheme

    def command(self, service: str) -> list[str]:
        command = self.services[service]["command"]
        if isinstance(command, list):
            return [self.local(service, expand(part, {})) for part in command]
        return shlex.split(self.local(service, expand(command, {})))

    def env(self, service: str, **extra: str) -> dict[str, str]:
        env = dict(self.base_env)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', os.environ['PATH'])}"
        for key, value in (self.services[service].get("environment") or {}).items():
            env[key] = self.local(service, expand(str(value), {}))
        env.update(extra)
        return env

    def run_once(self, service: str) -> subprocess.CompletedProcess[str]:
        """A one-shot service, to its end (its entrypoint, or `machine-hub`)."""
        entrypoint = self.services[service].get("entrypoint") or [sys.executable, "-m", "machine_hub"]
        done = subprocess.run(
            [*entrypoint, *self.command(service)], env=self.env(service), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{service} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def redis_args(self) -> tuple[str, ...]:
        """The redis service's options, less the port (RedisServer picks it) and with the TLS port."""
        args = self.command("redis")[1:]
        out: list[str] = []
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg == "--port":
                skip = True
                continue
            out.append(arg)
        return tuple(out)
