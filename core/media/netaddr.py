"""Which network addresses the bot may fetch from: result downloads go only to public (global) addresses.

A result URL comes from the gateway's answer, so whoever can forge or tamper with that answer could make the
bot fetch from inside its own network (loopback, private ranges, link-local such as the cloud metadata
service at 169.254.169.254). ``check_public`` refuses those, for the URL and every redirect hop, by the
addresses the host name resolves to. (A name that resolves differently between the check and the connection
is not caught; the check stops every plain redirect or URL pointing inward.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    name = host.lower().rstrip(".").strip("[]")
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_public_address(address: str) -> bool:
    """A global unicast address: not loopback, private, link-local (metadata), CGNAT, multicast or reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


Resolver = Callable[[str, int], Awaitable[list[str]]]
#: scheme, host and port: what trust is given to (a host name alone would trust every port on it)
Origin = tuple[str, str, int | None]


def origin(url: httpx.URL) -> Origin:
    """The origin of ``url``, its default port filled in (``https://a.example`` is ``https://a.example:443``)."""
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), url.port or default


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (OSError when it does not resolve)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def non_public_addresses(host: str, port: int, resolve: Resolver = system_resolve) -> list[str]:
    """The addresses ``host`` resolves to that are not public (empty: all public). A name that does not
    resolve counts as not public."""
    name = host.strip("[]")
    if is_loopback_host(name):
        return [name]
    try:
        ipaddress.ip_address(name)
        addresses = [name]
    except ValueError:
        try:
            addresses = await resolve(name, port)
        except OSError:
            return [f"{name} (does not resolve)"]
    return [a for a in addresses if not is_public_address(a)]
