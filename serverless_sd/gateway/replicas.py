"""Replicas: the app.py servers behind the --backend URLs, found again every few seconds.

A URL whose host is an IP address is one replica. An http:// URL whose host is a name stands for a replica set (a
Kubernetes headless Service, a compose service scaled out): the name is resolved again and again and each address is
a replica, so replicas join and leave as an autoscaler starts and stops them. IPv4 addresses are preferred, because a
dual-stack name (localhost included) gives one server an A and an AAAA record, and one server must be one replica.
An https:// URL stays one replica under its name: TLS, and the proxy such a name usually points at, need the name.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


def is_replica_set(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    try:
        ipaddress.ip_address(parts.hostname)
        return False
    except ValueError:
        return True


async def resolve(url: str) -> list[str] | None:
    """The replicas behind one --backend URL now: none when the name has no address (a replica set scaled to
    zero), None when the lookup failed for a passing reason (the caller keeps what it had)."""
    if not is_replica_set(url):
        return [url]
    parts = urlsplit(url)
    port = parts.port or 80
    try:
        # The C library's resolver (/etc/hosts, resolv.conf's search domains), in a thread as asyncio's own loop
        # does it; called through socket.getaddrinfo even under uvloop, so that the tests can set a name's answer.
        found = await asyncio.to_thread(socket.getaddrinfo, parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []
        return None
    addresses = {info[4][0] for info in found if info[0] == socket.AF_INET}
    addresses = addresses or {info[4][0] for info in found if info[0] == socket.AF_INET6}
    path = parts.path.rstrip("/")
    return [f"http://{_host(address)}:{port}{path}" for address in sorted(addresses)]


async def resolve_all(urls: list[str], previous: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each --backend URL's replicas now, keeping the previous answer for a URL whose lookup failed."""
    found = await asyncio.gather(*(resolve(url) for url in urls))
    return {url: previous.get(url, []) if now is None else now for url, now in zip(urls, found, strict=True)}


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
