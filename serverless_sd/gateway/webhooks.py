"""Webhooks: the final answer POSTed to the URL given at start, delivered at least once, signed when configured.

Deliveries wait in the store's outbox (a job's `webhook_due`), so a gateway that dies mid-retry loses none: any
gateway on the store delivers what is due. Only the hosts and ports the operator allowed (--webhook-host) are
called, so a caller cannot aim the gateway at internal addresses; redirects are not followed.

The signature covers a timestamp, so a captured delivery cannot be replayed later:
    X-Webhook-Timestamp: <unix seconds>
    X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
"""

import hashlib
import hmac
import json
import time
from urllib.parse import urlsplit

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
DELAYS_S = (1, 2, 4, 8)  # between the 5 attempts
TIMEOUT_S = 10


def allowed_entry(entry: str) -> tuple[str, int | None]:
    """A --webhook-host entry, "host" (ports 80 and 443) or "host:port", checked: raises ValueError."""
    parsed = urlsplit(f"//{entry}")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"--webhook-host {entry!r}: the port must be a number from 1 to 65535") from None
    if not parsed.hostname or parsed.path or parsed.query or parsed.username or "/" in entry or port == 0:
        raise ValueError(f"--webhook-host {entry!r}: give a host name or address, optionally with :port")
    return parsed.hostname.lower(), port


class Webhooks:
    def __init__(self, allowed: list[str], secret: str | None, first_delay_s: float = DELAYS_S[0]):
        self.allowed = {allowed_entry(entry) for entry in allowed}
        self.secret = secret
        self.delays = [first_delay_s * 2**i for i in range(len(DELAYS_S))]
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1

    def refusal(self, url: str) -> str | None:
        """Why this URL may not be called, or None."""
        try:
            parsed = urlsplit(url)
            port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
        except ValueError:
            return "webhook: not a valid URL"
        if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname or parsed.username or parsed.password:
            return "webhook: must be an http(s) URL without credentials"
        host = parsed.hostname.lower()
        default_port = port == DEFAULT_PORTS[parsed.scheme]
        if (host, port) not in self.allowed and not ((host, None) in self.allowed and default_port):
            return (f"webhook: {host}:{port} is not allowed (the operator lists hosts and ports with --webhook-host)")
        return None

    def headers(self, body: bytes, timestamp: int) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["X-Webhook-Timestamp"] = str(timestamp)
            headers["X-Webhook-Signature"] = signature(self.secret, body, timestamp)
        return headers

    async def deliver(self, url: str, answer: dict) -> int | str:
        """One attempt: the HTTP status, or the name of the transport error."""
        body = json.dumps(answer).encode()
        try:
            response = await self._client.post(url, content=body, headers=self.headers(body, int(time.time())))
            return response.status_code
        except httpx.HTTPError as error:
            return type(error).__name__

    async def close(self) -> None:
        await self._client.aclose()


def signature(secret: str, body: bytes, timestamp: int) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, timestamp: str, signature_header: str, tolerance_s: float = 300) -> bool:
    """What a receiver runs: the signature matches and the delivery is recent."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, int(timestamp)), signature_header)
