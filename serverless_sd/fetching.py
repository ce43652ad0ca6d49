"""Fetch a URL the operator allows, and nothing else: what a request names is never a way into the network (SSRF).

- The host must be on the operator's allow-list (`huggingface.co`, or `*.hf.co` for its subdomains); https only,
  unless the entry itself says `http://host:port` (a server the operator runs on their own network).
- The name is resolved once and every address it gives must be public: private, loopback, link-local, shared,
  reserved and multicast addresses are refused unless the entry is that address itself (`http://10.0.0.5:9000`).
  The connection goes to the address that was checked, so a second lookup cannot swap it (DNS rebinding).
- Redirects are followed, at most 3, and only to hosts on the list, each checked the same way.
- Bounded in bytes (a Content-Length over the bound is refused before the body is read) and in time (each read,
  and the whole transfer).

Every refusal is a FetchError whose message the caller may read: it names the URL's host, never an address.
"""

import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 3
CHUNK = 1 << 20
DEFAULT_PORTS = {"https": 443, "http": 80}


class FetchError(ValueError):
    """The URL was refused or could not be fetched: the message says why, for the caller."""


@dataclass(frozen=True)
class Entry:
    scheme: str  # "https", or "http" where the operator wrote it
    host: str  # lower case; "*.example.com" for its subdomains
    port: int | None  # None: the scheme's own

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or port != (self.port or DEFAULT_PORTS[scheme]):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


@dataclass(frozen=True)
class Allowed:
    """The operator's allow-list: comma-separated hosts, e.g. `huggingface.co,*.hf.co,http://10.0.0.5:9000`."""

    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> "Allowed":
        items = text.split(",") if isinstance(text, str) else text
        return _parse(tuple(item.strip() for item in items if item.strip()))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def refusal(self, url: str) -> str | None:
        """Why this URL may not be fetched, without touching the network; None if it may be tried."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "not a valid URL"
        if parts.scheme not in DEFAULT_PORTS:
            return "must be an https:// URL"
        if not parts.hostname:
            return "has no host"
        if parts.username or parts.password:
            return "must not carry a user name or password"
        host = parts.hostname.lower()
        if not any(entry.matches(parts.scheme, host, port or DEFAULT_PORTS[parts.scheme]) for entry in self.entries):
            if parts.scheme == "http" and any(entry.matches("https", host, 443) for entry in self.entries):
                return "must be an https:// URL"
            listed = ", ".join(_shown(entry) for entry in self.entries) or "none: fetching is off"
            return f"its host {host[:100]!r} is not one this deployment fetches from (allowed: {listed})"
        return None

    def pattern(self) -> str:
        """A regular expression of the URLs refusal() lets through (for the OpenAPI document)."""
        hosts = [(f"{entry.scheme}://" + ("[^/:@]*" + re.escape(entry.host[1:]) if entry.host.startswith("*.")
                                           else re.escape(entry.host))
                  + (f":{entry.port}" if entry.port else f"(:{DEFAULT_PORTS[entry.scheme]})?"))
                 for entry in self.entries]
        return f"^({'|'.join(hosts)})(/|$)"

    def lists_address(self, address: str) -> bool:
        """Whether the operator listed this very address (and so allows it, private or not)."""
        return any(entry.host == address for entry in self.entries)


@lru_cache(maxsize=32)
def _parse(items: tuple[str, ...]) -> Allowed:
    entries = []
    for item in items:
        parts = urlsplit(item if "://" in item else f"https://{item}")
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"allow-list entry {item!r}: write a host (example.com, *.example.com) or "
                             "http(s)://host:port")
        entries.append(Entry(parts.scheme, parts.hostname.lower(), parts.port))
    return Allowed(tuple(entries))


def _shown(entry: Entry) -> str:
    text = entry.host if entry.scheme == "https" else f"http://{entry.host}"
    return text + (f":{entry.port}" if entry.port else "")


def fetch(url: str, allowed: Allowed, max_bytes: int, timeout_s: float, into: Path) -> Path:
    """Write the body to `into`, whole or not at all (a temporary file beside it, renamed at the end)."""
    into.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=into.parent, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in _chunks(url, allowed, max_bytes, timeout_s):
                out.write(chunk)
        os.replace(temporary, into)
    except BaseException:
        os.unlink(temporary)
        raise
    return into


def fetch_bytes(url: str, allowed: Allowed, max_bytes: int, timeout_s: float) -> bytes:
    return b"".join(_chunks(url, allowed, max_bytes, timeout_s))


def _chunks(url: str, allowed: Allowed, max_bytes: int, timeout_s: float) -> Iterable[bytes]:
    deadline = time.monotonic() + timeout_s
    response, connection, host = _get(url, allowed, deadline)
    try:
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"{host} answered {declared} bytes, over the limit of {max_bytes}")
        received = 0
        while chunk := response.read(CHUNK):
            received += len(chunk)
            if received > max_bytes:
                raise FetchError(f"{host} sent more than the limit of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError(f"{host} took longer than {timeout_s:g} s")
            yield chunk
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(f"reading from {host} failed ({type(error).__name__})") from None
    finally:
        connection.close()


def _get(url: str, allowed: Allowed, deadline: float):
    for _ in range(MAX_REDIRECTS + 1):
        if reason := allowed.refusal(url):
            raise FetchError(reason)
        parts = urlsplit(url)
        host = parts.hostname.lower()
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        address = _public_address(host, port, allowed)
        remaining = max(0.1, deadline - time.monotonic())
        connection = (_PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP)(host, port, address, remaining)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers={"User-Agent": "sd-serverless-template",
                                                       "Accept-Encoding": "identity"})
            response = connection.getresponse()
        except TimeoutError:
            connection.close()
            raise FetchError(f"{host} did not answer in time") from None
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise FetchError(f"cannot fetch from {host} ({type(error).__name__})") from None
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            url = urljoin(url, response.getheader("Location"))
            connection.close()
            continue
        if response.status != 200:
            connection.close()
            raise FetchError(f"{host} answered HTTP {response.status}")
        return response, connection, host
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _public_address(host: str, port: int, allowed: Allowed) -> str:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"{host} does not resolve") from None
    addresses = [info[4][0] for info in found]
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global and not allowed.lists_address(address):
            raise FetchError(f"{host} resolves to an address inside the network, which is never fetched")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address already checked; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # the certificate names the host
