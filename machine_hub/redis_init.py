"""`machine-hub redis-init`: what a fresh Redis needs before it first starts, made once.

Compose runs it as a one-shot service: a TLS certificate for the server (its CA copied where
agents find it), and an ACL file whose `default` user is the admin, with a random password
written to an admin URL file (0600). Nothing of it is in the image, and a second run keeps what
is there, so restarts change nothing.

Behind Sentinel (deploy/compose.ha.yml) it also makes the `replication` user that replicas and
sentinels log in to the data nodes as, with only the commands those need (Redis's ACL docs,
"Sentinel and replicas"), its password in a file of its own: the admin URL stays where it was.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import click

from core.admin import user_url
from machine_hub.tls_certs import CA_CERT, make, still_good

ACL_FILE = "users.acl"
REPLICATION_USER = "replication"
REPLICATION_RULES = (
    "resetchannels &__sentinel__:hello -@all +psync +replconf +ping +info +role +multi +exec +slaveof +replicaof"
    " +config|rewrite +client|setname +client|kill +script|kill +publish +subscribe"
)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def init(
    folder: Path,
    *,
    url: str,
    admin_url_file: Path,
    ca_file: Path | None,
    tls_hosts: list[str],
    replication_file: Path | None = None,
) -> list[str]:
    """Make what is missing; what was made, for the log."""
    made: list[str] = []
    if tls_hosts:
        if not still_good(folder / "tls", tls_hosts):
            make(folder / "tls", tls_hosts)
            made.append(f"TLS certificate for {', '.join(tls_hosts)}")
        if ca_file is not None:
            ca_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "tls" / CA_CERT, ca_file)
    acl_file = folder / ACL_FILE
    if not acl_file.exists() or not admin_url_file.exists():
        password = secrets.token_urlsafe(32)
        digest = hashlib.sha256(password.encode()).hexdigest()
        # Only the password's SHA-256 is in the ACL file Redis reads (and rewrites on ACL SAVE).
        _write_private(acl_file, f"user default on #{digest} ~* &* +@all\n")
        _write_private(admin_url_file, user_url(url, "default", password) + "\n")
        made.append(f"admin user and {admin_url_file}")
    if replication_file is not None and not (
        replication_file.exists() and f"user {REPLICATION_USER} " in acl_file.read_text()
    ):
        password = secrets.token_urlsafe(32)
        digest = hashlib.sha256(password.encode()).hexdigest()
        with acl_file.open("a") as f:
            f.write(f"user {REPLICATION_USER} on #{digest} {REPLICATION_RULES}\n")
        _write_private(replication_file, password + "\n")
        made.append(f"{REPLICATION_USER} user and {replication_file}")
    return made


@click.command("redis-init")
@click.option("--dir", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--url", required=True, help="The Redis URL (no credentials) the admin URL names, e.g. redis://redis:6379/0."
)
@click.option("--admin-url-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--ca-file", type=click.Path(dir_okay=False, path_type=Path), help="Where agents find the CA certificate."
)
@click.option("--tls-host", "tls_hosts", multiple=True, help="A name the TLS certificate is for (repeatable).")
@click.option(
    "--replication-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Behind Sentinel: also make the user replicas and sentinels log in as; its password goes here.",
)
def redis_init(
    folder: Path,
    url: str,
    admin_url_file: Path,
    ca_file: Path | None,
    tls_hosts: tuple[str, ...],
    replication_file: Path | None,
) -> None:
    """Make a Redis's ACL file (admin password in ADMIN_URL_FILE) and TLS certificate, once."""
    if not urlsplit(url).hostname:
        raise click.BadParameter("must name a host, like redis://redis:6379/0", param_hint="--url")
    made = init(
        folder,
        url=url,
        admin_url_file=admin_url_file,
        ca_file=ca_file,
        tls_hosts=list(tls_hosts),
        replication_file=replication_file,
    )
    click.echo(f"{folder}: made {'; '.join(made)}" if made else f"{folder}: all there already; kept")
