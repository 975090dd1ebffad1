"""apps.security.client_address.client_ip: X-Forwarded-For is believed only from TRUSTED_PROXIES, read from
the right, and never past an entry that is not an address."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from apps.security.checks import check_trusted_proxies
from apps.security.client_address import client_ip


def request_from(peer: str, forwarded: str | None = None):  # type: ignore[no-untyped-def]
    extra = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "client"),
    [
        # No proxy configured (the default): the header is the client's word, not an address.
        ([], "198.51.100.7", "203.0.113.1", "198.51.100.7"),
        ([], "127.0.0.1", "203.0.113.1", "127.0.0.1"),
        # From a trusted proxy: the address the proxy appended; what the client wrote before it is ignored.
        (["10.0.0.1"], "10.0.0.1", "6.6.6.6, 203.0.113.1", "203.0.113.1"),
        # Two proxies in a row, both trusted (one by network): skip both.
        (["10.0.0.1", "10.1.0.0/16"], "10.0.0.1", "6.6.6.6, 203.0.113.1, 10.1.2.3", "203.0.113.1"),
        # From anyone else the header is ignored, even if it names a trusted proxy.
        (["10.0.0.1"], "198.51.100.7", "10.0.0.1", "198.51.100.7"),
        # A trusted proxy without the header: the proxy itself.
        (["10.0.0.1"], "10.0.0.1", None, "10.0.0.1"),
        # Garbage where an address should be: nothing left of it is believed.
        (["10.0.0.1"], "10.0.0.1", "203.0.113.1, not-an-ip", "10.0.0.1"),
        # IPv6.
        (["2001:db8::/32"], "2001:db8::5", "2001:db8:ffff::1, 2a00:1450::1", "2a00:1450::1"),
    ],
)
def test_client_ip(settings, proxies, peer, forwarded, client) -> None:  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXIES = proxies

    assert client_ip(request_from(peer, forwarded)) == client


def test_a_malformed_trusted_proxies_entry_is_a_startup_error(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXIES = ["10.0.0.1", "proxy.internal"]

    (error,) = check_trusted_proxies(None)

    assert error.id == "agentplatform.E001" and "proxy.internal" in error.msg
    settings.TRUSTED_PROXIES = ["10.0.0.1", "10.2.0.0/16"]
    assert check_trusted_proxies(None) == []
