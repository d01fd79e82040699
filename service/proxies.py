"""The real client address behind a balancer (``TOKENGATE_TRUSTED_PROXIES``).

A request that comes from a trusted proxy names its client in
``X-Forwarded-For``; each proxy appends the address it saw. Walking that list
from the right, the first address that is not a trusted proxy is the client:
everything to its left was written by the client itself and proves nothing.
With no trusted proxies (the default) the header is ignored, since anyone may
send it. The address is what the login throttle counts by, and what the
sessions list shows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: tuple[str, ...]) -> str:
    """The client's address: ``peer``, or the rightmost untrusted hop it forwarded for us."""
    nets = networks(trusted)
    current = _parse(peer or "")
    if current is None:
        return peer or ""
    if not nets:
        return str(current)
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    while any(current in net for net in nets) and hops:
        previous = _parse(hops.pop())
        if previous is None:
            break  # a hop we cannot read: keep the last proxy we trust
        current = previous
    return str(current)


def throttle_address(address: str) -> str:
    """The unit the login throttle counts: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually holds a whole /64, so counting single IPv6
    addresses would give it billions of fresh counters.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _last(values: Sequence[str]) -> str:
    """The value the nearest proxy wrote: the last of a header's comma-separated list."""
    hops = [hop.strip() for value in values for hop in value.split(",") if hop.strip()]
    return hops[-1] if hops else ""


def public_origin(
    scheme: str, host: str, peer: str | None, forwarded_proto: Sequence[str],
    forwarded_host: Sequence[str], trusted: tuple[str, ...],
) -> str:  # fmt: skip
    """The scheme and host the client addressed: ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` when the request comes from a trusted proxy, else the
    request's own (anyone may send those headers)."""
    current = _parse(peer or "")
    if current is not None and any(current in net for net in networks(trusted)):
        proto = _last(forwarded_proto).lower()
        if proto in ("http", "https"):
            scheme = proto
        host = _last(forwarded_host) or host
    return f"{scheme}://{host}"
