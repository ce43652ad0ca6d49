"""A name whose addresses the tests set, as a cluster's DNS sets a headless Service's to its ready pods.

Processes started with `Hosts.env` resolve the names in the hosts file to the addresses it lists at that moment (read
at every lookup; an empty list is "no such name", as a Service with no ready pod answers); every other name
resolves as usual. The code under test calls the real socket.getaddrinfo: only the system's answer is replaced.
"""

import json
import os
import socket
from pathlib import Path

VARIABLE = "TESTKIT_HOSTS"
_system_getaddrinfo = socket.getaddrinfo


class Hosts:
    def __init__(self, path: Path):
        self.path = path
        self.names: dict[str, list[str]] = {}
        self._write()

    @property
    def env(self) -> dict[str, str]:
        here = Path(__file__).parent
        path = [str(here / "site"), str(here.parent), os.environ.get("PYTHONPATH")]  # sitecustomize imports testkit
        return {VARIABLE: str(self.path), "PYTHONPATH": os.pathsep.join(filter(None, path))}

    def set(self, name: str, addresses: list[str]) -> None:
        self.names[name] = addresses
        self._write()

    def _write(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.names))
        temporary.replace(self.path)  # a reader sees the old list or the new one, never half of one


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    path = os.environ.get(VARIABLE)
    names = json.loads(Path(path).read_text()) if path else {}
    if isinstance(host, bytes):
        host = host.decode()
    if host not in names:
        return _system_getaddrinfo(host, port, family, type, proto, flags)
    if not names[host]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [info for address in names[host]
            for info in _system_getaddrinfo(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)]


def install() -> None:
    socket.getaddrinfo = getaddrinfo
