"""The client's address, as every security decision sees it (login lockout, the per-address rate limit).

X-Forwarded-For is written by whoever sends the request, so it is believed only when the connection comes
from a proxy listed in settings.TRUSTED_PROXIES (addresses or CIDR networks; empty by default). Then the
header is read from the right, skipping the trusted proxies' own entries: the first address that is not a
trusted proxy is the client. Everything left of it was supplied by the client and is ignored.

Under `make run` uvicorn is given the same list (--forwarded-allow-ips) and rewrites REMOTE_ADDR the same
way before Django sees it; reading the header again here then changes nothing, and a server that does not
rewrite it (another ASGI/WSGI server) gets the same answer.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    """TRUSTED_PROXIES parsed. Raises ValueError on an entry that is neither an address nor a network (the
    system check security.E001 reports it at startup)."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in proxies if entry.strip())


def _address(value: str) -> Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_ip(request: HttpRequest) -> str:
    peer = request.META.get("REMOTE_ADDR") or ""
    networks = trusted_networks(tuple(settings.TRUSTED_PROXIES))
    peer_address = _address(peer)
    if not networks or peer_address is None or not _trusted(peer_address, networks):
        return peer
    hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    client = str(peer_address)
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # not an address: nothing from here leftwards can be believed; the last proxy is the client
        client = str(address)
        if not _trusted(address, networks):
            break
    return client
