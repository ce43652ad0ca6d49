"""The gateway's settings: command-line flags, with environment defaults for the ones Banana users already set."""

import argparse
import ipaddress
import os
import typing

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from .webhooks import allowed_entry

MIN_KEY_CHARS = 16


def flag(help_text: str, env: str | None = None, name: str | None = None) -> dict:
    """A field's command line: its help, the environment variable that stands in for it, a flag name if not
    --field-name. A list field is a repeatable flag (its variable comma-separated)."""
    return {"description": help_text, "json_schema_extra": {"env": env, "flag": name}}


class GatewayConfig(BaseModel):
    """Every flag of gateway.py, declared once: parse_args builds the command line from these fields."""

    host: str = Field("127.0.0.1", **flag("listen address (beyond loopback, API keys are required)"))
    port: int = Field(8080, ge=0, le=65535, **flag("listen port"))
    backends: list[str] = Field(min_length=1, **flag(
        "an app.py replica's URL, or http://NAME:PORT for every address NAME resolves to (a Kubernetes headless "
        "Service); repeat for several", "BANANA_BACKENDS", "--backend"))
    resolve_every: float = Field(5, gt=0, **flag("how often backend names are resolved again (s)"))
    api_keys: list[SecretStr] = Field([], **flag("an accepted apiKey (16+ characters); repeat for several",
                                                 "BANANA_API_KEYS", "--api-key"))
    model_key: SecretStr | None = Field(None, **flag("the modelKey callers must send (unset: any)", "BANANA_MODEL_KEY"))
    model_name: str = Field("stable-diffusion", min_length=1, **flag(
        "the model's name in the OpenAI and AUTOMATIC1111 APIs (GET /v1/models, /sdapi/v1/sd-models)",
        "BANANA_MODEL_NAME"))
    store: str = Field("sqlite:///gateway.db", **flag("sqlite:///path or redis://host:port/db", "BANANA_STORE"))
    sync_timeout: float = Field(60, gt=0, **flag("how long a start without startOnly waits (s)"))
    long_poll: float = Field(50, gt=0, **flag("how long a check with longPoll waits (s)"))
    job_timeout: float = Field(300, gt=0, **flag("a job's time limit on a replica, and in the queue (s)"))
    result_ttl: float = Field(24 * 3600, gt=0, **flag("how long results are kept (s)"))
    lease: float = Field(15, gt=0, **flag("a running job whose gateway stopped renewing it is recovered after (s): "
                                          "its replica asked whether it runs it or answered it"))
    max_tries: int = Field(3, ge=1, **flag("a job whose replica failed or vanished with it this many times is failed "
                                           "(a job that takes down every replica it is given)"))
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, **flag("the largest request body"))
    max_queued: int = Field(1000, ge=1, **flag("the most jobs waiting per modelKey"))
    max_queued_bytes: int = Field(1 << 30, ge=1024, **flag("the most bytes of modelInputs held for jobs queued or "
                                                            "running"))
    webhook_hosts: list[str] = Field([], **flag("host[:port] that webhook URLs may name (no port: 80 and 443); "
                                                "repeat for several", name="--webhook-host"))
    webhook_secret: SecretStr | None = Field(None, **flag("signs webhooks over timestamp and body",
                                                          "BANANA_WEBHOOK_SECRET"))

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


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(description="Banana's v4 REST API (start/check) in front of app.py replicas.")
    flags, from_env = {}, {}
    for name, field in GatewayConfig.model_fields.items():
        extra = field.json_schema_extra or {}
        flags[name] = extra["flag"] or "--" + name.replace("_", "-")
        repeated = typing.get_origin(field.annotation) is list
        default = "required" if field.is_required() else field.get_default()
        shown = "none" if default in (None, []) or isinstance(default, SecretStr) else default
        env = f"; env {extra['env']}" + (", comma-separated" if repeated else "") if extra["env"] else ""
        parser.add_argument(flags[name], dest=name, action="append" if repeated else "store", default=None,
                            help=f"{field.description} (default: {shown}{env})")
        variable = os.environ.get(extra["env"] or "", "")
        from_env[name] = [item.strip() for item in variable.split(",") if item.strip()] if repeated else variable
    given = vars(parser.parse_args(argv))
    # A flag replaces its environment variable (it does not add to a list from it).
    args = {name: value for name, value in given.items() if value is not None}
    args |= {name: value for name, value in from_env.items() if value and given[name] is None}
    try:
        config = GatewayConfig.model_validate(args)
    except ValidationError as error:
        parser.error("; ".join(f"{flags[str(e['loc'][0])]}: {e['msg'].removeprefix('Value error, ')}"
                               for e in error.errors()))
    if not config.loopback_only() and not config.api_keys:
        parser.error(f"--host {config.host} listens beyond this machine: give --api-key (or BANANA_API_KEYS)")
    return config
