"""Webhooks: the final answer POSTed to the URL given at start, retried with back-off, signed when configured.

Only hosts the operator allowed (--webhook-host) are called, so a caller cannot aim the gateway at internal
addresses; redirects are not followed.
"""

import asyncio
import hashlib
import hmac
import json
from urllib.parse import urlparse

import httpx

from .. import logs


class Webhooks:
    def __init__(self, allowed_hosts: list[str], secret: str | None, attempts: int = 5, first_delay_s: float = 1.0):
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.secret = secret
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self._tasks: set[asyncio.Task] = set()

    def refusal(self, url: str) -> str | None:
        """Why this URL may not be called, or None."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return "webhook: must be an http(s) URL"
        if parsed.hostname.lower() not in self.allowed_hosts:
            return f"webhook: host {parsed.hostname!r} is not allowed (the operator lists hosts with --webhook-host)"
        return None

    def send(self, url: str, answer: dict) -> None:
        task = asyncio.create_task(self._deliver(url, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def signature(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()

    async def _deliver(self, url: str, answer: dict) -> None:
        body = json.dumps(answer).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["X-Webhook-Signature"] = self.signature(body)
        delay = self.first_delay_s
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    status = (await client.post(url, content=body, headers=headers)).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                logs.event("webhook", call_id=answer.get("callID"), attempt=attempt, status=status)
                if isinstance(status, int) and 200 <= status < 300:
                    return
                if attempt < self.attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
