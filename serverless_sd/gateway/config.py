"""The gateway's settings: command-line flags, with environment defaults for the ones Banana users already set."""

import argparse
import ipaddress
import os

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from .webhooks import allowed_entry

MIN_KEY_CHARS = 16


class GatewayConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    backends: list[str] = Field(min_length=1)
    api_keys: list[SecretStr] = []
    model_key: SecretStr | None = None
    store: str = "sqlite:///gateway.db"
    sync_timeout: float = Field(60, gt=0)
    long_poll: float = Field(50, gt=0)
    job_timeout: float = Field(300, gt=0)
    result_ttl: float = Field(24 * 3600, gt=0)
    lease: float = Field(15, gt=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_queued: int = Field(1000, ge=1)
    max_queued_bytes: int = Field(1 << 30, ge=1024)
    webhook_hosts: list[str] = []
    webhook_secret: SecretStr | None = None

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # `--api-key "$KEY"` with KEY unset gives "": that must not turn authentication off.
        for key in keys:
            value = key.get_secret_value()
            if len(value) < MIN_KEY_CHARS:
                raise ValueError(f"an API key must have at least {MIN_KEY_CHARS} characters (one has {len(value)})")
            if not value.isascii() or not value.isprintable() or any(c in value for c in ' "\\'):
                raise ValueError("an API key may hold printable ASCII only, without spaces, quotes or backslashes")
        return keys

    @field_validator("webhook_hosts")
    @classmethod
    def _webhook_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            allowed_entry(entry)
        return entries

    @field_validator("backends")
    @classmethod
    def _strip_slash(cls, urls: list[str]) -> list[str]:
        return [url.rstrip("/") for url in urls]

    def loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _csv(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(description="Banana's v4 REST API (start/check) in front of app.py replicas.")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (beyond loopback, API keys are required)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--backend", dest="backends", action="append", default=None,
                        help="an app.py replica's URL; repeat for several (env BANANA_BACKENDS, comma-separated)")
    parser.add_argument("--api-key", dest="api_keys", action="append", default=None,
                        help="an accepted apiKey; repeat for several (env BANANA_API_KEYS, comma-separated)")
    parser.add_argument("--model-key", default=os.environ.get("BANANA_MODEL_KEY"),
                        help="the modelKey callers must send (env BANANA_MODEL_KEY; unset: any)")
    parser.add_argument("--store", default=os.environ.get("BANANA_STORE", "sqlite:///gateway.db"),
                        help="sqlite:///path (default) or redis://host:port/db (env BANANA_STORE)")
    parser.add_argument("--sync-timeout", type=float, default=60, help="how long a start without startOnly waits (s)")
    parser.add_argument("--long-poll", type=float, default=50, help="how long a check with longPoll waits (s)")
    parser.add_argument("--job-timeout", type=float, default=300,
                        help="a job's time limit on a replica, and in the queue (s)")
    parser.add_argument("--result-ttl", type=float, default=24 * 3600, help="how long results are kept (s)")
    parser.add_argument("--lease", type=float, default=15,
                        help="a running job whose gateway has not renewed it for this long is run again (s)")
    parser.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--max-queued", type=int, default=1000, help="the most jobs waiting per modelKey")
    parser.add_argument("--max-queued-bytes", type=int, default=1 << 30,
                        help="the most bytes of modelInputs held for jobs queued or running")
    parser.add_argument("--webhook-host", dest="webhook_hosts", action="append", default=[],
                        help="host[:port] that start's `webhook` URLs may name (no port: 80 and 443); repeat")
    parser.add_argument("--webhook-secret", default=os.environ.get("BANANA_WEBHOOK_SECRET"),
                        help="signs webhooks: X-Webhook-Signature over timestamp and body (env BANANA_WEBHOOK_SECRET)")
    args = vars(parser.parse_args(argv))
    args["backends"] = args["backends"] or _csv("BANANA_BACKENDS")
    args["api_keys"] = args["api_keys"] or _csv("BANANA_API_KEYS")
    try:
        config = GatewayConfig.model_validate({k: v for k, v in args.items() if v is not None})
    except ValidationError as error:
        flags = {"api_keys": "api-key", "backends": "backend", "webhook_hosts": "webhook-host"}
        parser.error("; ".join(f"--{flags.get(e['loc'][0], str(e['loc'][0]).replace('_', '-'))}: "
                               f"{e['msg'].removeprefix('Value error, ')}" for e in error.errors()))
    if not config.loopback_only() and not config.api_keys:
        parser.error(f"--host {config.host} listens beyond this machine: give --api-key (or BANANA_API_KEYS)")
    return config
