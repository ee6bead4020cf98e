"""Where webhooks may point (core.destinations): URL rules when stored, address rules when called."""

from __future__ import annotations

import ipaddress
import re

import pytest

from core.destinations import AddressRefused, LookupFailed, UnfitURL, check_url, public, resolve


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "::1",  # loopback
        "10.1.2.3", "172.16.0.1", "192.168.1.1", "fc00::1", "fd12::1",  # private
        "169.254.169.254", "fe80::1",  # link-local, cloud metadata
        "224.0.0.1", "ff02::1",  # multicast
        "0.0.0.0", "::",  # unspecified
        "100.64.0.1", "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255",  # shared, test, reserved
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::",  # IPv4 inside IPv6
    ],
)  # fmt: skip
def test_addresses_inside_the_deployment_are_not_public(address: str) -> None:
    assert not public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_routable_unicast_addresses_are_public(address: str) -> None:
    assert public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://example.com:8080/a/b?c=d",
        "https://93.184.216.34/x",
        "https://[2606:4700::1]/",
    ],
)
def test_public_http_urls_are_fit(url: str) -> None:
    assert str(check_url(url, allow_private=False)) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http:///hook", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://token@example.com/", "credentials"),
        ("https://example.com:99999/", "port"),
        ("https://exa mple.com/", "printable ASCII"),
        ("https://exämple.com/", "printable ASCII"),
        ("https://example.com\\@127.0.0.1/", "backslashes"),
        ("https://example.com/\n", "printable ASCII"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
        ("http://127.0.0.1:3006/api", "not a public address"),
        ("http://[::1]/", "not a public address"),
        ("http://169.254.169.254/latest/meta-data/", "not a public address"),
        ("http://10.0.0.5/", "not a public address"),
        ("http://localhost:6379/", "localhost"),
        ("http://redis.localhost./", "localhost"),
    ],
)
def test_unfit_urls_are_refused_with_the_rule(url: str, reason: str) -> None:
    with pytest.raises(UnfitURL, match=re.escape(reason)):
        check_url(url, allow_private=False)


def test_allowing_private_addresses_lifts_only_the_address_rules() -> None:
    assert check_url("http://127.0.0.1:9000/hook", allow_private=True).port == 9000
    assert check_url("http://localhost/hook", allow_private=True).host == "localhost"
    with pytest.raises(UnfitURL):
        check_url("ftp://127.0.0.1/", allow_private=True)
    with pytest.raises(UnfitURL):
        check_url("http://u:p@127.0.0.1/", allow_private=True)


async def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    with pytest.raises(AddressRefused, match="localhost resolves to"):
        await resolve("localhost", 80, allow_private=False)
    # getaddrinfo reads 2130706433 as 127.0.0.1: the text of a URL is never what is judged.
    with pytest.raises(AddressRefused, match=re.escape("127.0.0.1")):
        await resolve("2130706433", 80, allow_private=False)
    assert await resolve("localhost", 80, allow_private=True) in ("127.0.0.1", "::1")


async def test_a_literal_address_is_connected_to_as_it_is() -> None:
    assert await resolve("93.184.216.34", 443, allow_private=False) == "93.184.216.34"
    with pytest.raises(AddressRefused):
        await resolve("169.254.169.254", 80, allow_private=False)


async def test_a_name_that_does_not_resolve_is_a_lookup_failure() -> None:
    with pytest.raises(LookupFailed):
        await resolve("no-such-host.invalid", 443, allow_private=False)
