"""The gateway's settings: command-line flags, with environment defaults for the ones Banana users already set."""

import argparse
import ipaddress
import os

from pydantic import BaseModel, Field, SecretStr, field_validator


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
    webhook_hosts: list[str] = []
    webhook_secret: SecretStr | None = None

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
    parser.add_argument("--webhook-host", dest="webhook_hosts", action="append", default=[],
                        help="a host that start's `webhook` URLs may name; repeat for several")
    parser.add_argument("--webhook-secret", default=os.environ.get("BANANA_WEBHOOK_SECRET"),
                        help="signs webhook bodies: X-Webhook-Signature: sha256=HMAC (env BANANA_WEBHOOK_SECRET)")
    args = vars(parser.parse_args(argv))
    args["backends"] = args["backends"] or _csv("BANANA_BACKENDS")
    args["api_keys"] = args["api_keys"] or _csv("BANANA_API_KEYS")
    config = GatewayConfig.model_validate({k: v for k, v in args.items() if v is not None})
    if not config.loopback_only() and not config.api_keys:
        parser.error(f"--host {config.host} listens beyond this machine: give --api-key (or BANANA_API_KEYS)")
    return config
