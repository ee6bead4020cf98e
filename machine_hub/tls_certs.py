"""`machine-hub tls-certs`: a private CA and a server certificate for Redis, made once.

Compose runs it as a one-shot service before Redis starts, keeping the files in a volume; agents
then verify the server with the CA (`rediss://` and MACHINE_HUB_REDIS_CA). Existing files are
kept while the certificate still has a month to live and names every requested host.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.crt", "server.key"
VALID_DAYS = 3650
RENEW_BEFORE_DAYS = 30


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def still_good(folder: Path, hosts: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((folder / SERVER_CERT).read_bytes())
        (folder / CA_CERT).read_bytes()
        (folder / SERVER_KEY).stat()
    except (OSError, ValueError):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return left > datetime.timedelta(days=RENEW_BEFORE_DAYS) and all(n in list(named) for n in _alt_names(hosts))


def make(folder: Path, hosts: list[str], *, days: int = VALID_DAYS) -> None:
    """A new CA (its key is not kept: nothing else is ever signed) and a server certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("machine-hub Redis CA"))
        .issuer_name(_name("machine-hub Redis CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(folder / SERVER_KEY, key_pem, 0o600)
    _write(folder / SERVER_CERT, server.public_bytes(pem), 0o644)
    _write(folder / CA_CERT, ca.public_bytes(pem), 0o644)


@click.command("tls-certs")
@click.option("--dir", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, required=True, help="A name or IP the server answers as (repeatable).")
def tls_certs(folder: Path, hosts: tuple[str, ...]) -> None:
    """Make a CA and a Redis server certificate in DIR, unless good ones are there already."""
    if still_good(folder, list(hosts)):
        click.echo(f"{folder}: certificates still good; kept")
        return
    make(folder, list(hosts))
    click.echo(f"{folder}: {CA_CERT} (give it to agents as MACHINE_HUB_REDIS_CA), {SERVER_CERT}, {SERVER_KEY}")
