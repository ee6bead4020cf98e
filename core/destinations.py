"""Where a webhook may point, and the one address a delivery connects to (against SSRF).

A webhook URL is given by a tenant, and the worker that calls it sits inside the deployment, next
to Redis, cloud metadata (169.254.169.254) and whatever else listens on private addresses. So:

- when it is stored, a URL must be http or https, printable ASCII (an IDN host in its `xn--`
  form), at most MAX_URL_LENGTH long, without credentials, and not name a loopback, private,
  link-local, multicast or unspecified address literally (nor `localhost`);
- when it is called, its host is resolved once, every address it resolves to must be a public
  one, and the delivery connects to the address that was checked (core.deliveries), so a name
  that resolves to a public address when checked and to a private one when connecting (DNS
  rebinding) cannot slip in between.

`webhook_allow_private` lifts the address rules (tests, closed labs), never the others. One
parser, httpx2's, reads a URL both times, so what is checked is what is called.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx2

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnfitURL(ValueError):
    """A webhook URL the rules above refuse; the message says which rule."""


class AddressRefused(OSError):
    """The host resolves to an address deliveries may not reach."""


class LookupFailed(OSError):
    """The host's name did not resolve."""


def public(address: IPAddress) -> bool:
    """A globally routable unicast address, looking through IPv4 carried in IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            address = embedded
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> httpx2.URL:
    """The URL parsed, or UnfitURL saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise UnfitURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        raise UnfitURL("the URL must be printable ASCII without spaces or backslashes (an IDN host as xn--)")
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        raise UnfitURL(f"not a URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        raise UnfitURL("the URL must start with http:// or https://")
    if not parsed.host:
        raise UnfitURL("the URL has no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnfitURL("the URL's port must be from 1 to 65535")
    if parsed.userinfo:
        raise UnfitURL("the URL must not hold credentials (user:password@)")
    if not allow_private:
        host = parsed.host.rstrip(".").lower()
        address = _literal(host)
        if address is not None and not public(address):
            raise UnfitURL(f"{address} is not a public address")
        if host == "localhost" or host.endswith(".localhost"):
            raise UnfitURL("localhost is not a public host")
    return parsed


def port_of(url: httpx2.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to: the host's first, once every address it has passed the rules."""
    literal = _literal(host)
    if literal is not None:
        candidates = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise LookupFailed(f"{host}: {exc}") from None
        # getaddrinfo also reads forms like 2130706433 or 0x7f.1 (both 127.0.0.1): only what it
        # returns is judged, never the text of the URL.
        candidates = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    if not candidates:
        raise LookupFailed(f"{host}: no address")
    refused = [a for a in candidates if not public(a)]
    if refused and not allow_private:
        raise AddressRefused(f"{host} resolves to {refused[0]}, which is not a public address")
    return str(candidates[0])
