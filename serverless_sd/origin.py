"""No browser may drive these servers from another site; curl and SDKs are unaffected.

A web page can POST a "simple" request (text/plain or a form, no CORS preflight) to any address, a local app.py or a
key-less loopback gateway included, and both read any body as JSON. Browsers mark such requests (`Origin`,
`Sec-Fetch-Site`); command-line clients and SDKs send neither, so `curl -d` keeps working. DNS rebinding makes a
hostile page same-origin with a loopback server under its own name: a loopback listener answers only requests
addressed to a loopback name.
"""

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(headers: Mapping[str, str], loopback_listener: bool) -> str | None:
    """Why this request may not be served, or None. `headers` is case-insensitive (Flask's, Starlette's)."""
    host = headers.get("host", "")
    if loopback_listener and not is_loopback(urlsplit(f"//{host}").hostname or ""):
        return "Host: this server listens on loopback and answers only requests addressed to localhost"
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
        return "Origin: requests from another site's pages are refused"
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "Sec-Fetch-Site: requests from another site's pages are refused"
    return None
