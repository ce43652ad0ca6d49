import re
import subprocess
import sys

import pytest

from serverless_sd.gateway.config import GatewayConfig, parse_args
from testkit.processes import ROOT


def test_defaults():
    config = parse_args(["--backend", "http://127.0.0.1:8000/"])
    assert (config.host, config.port, config.store) == ("127.0.0.1", 8080, "sqlite:///gateway.db")
    assert (config.sync_timeout, config.long_poll, config.job_timeout, config.result_ttl) == (60, 50, 300, 86400)
    assert config.backends == ["http://127.0.0.1:8000"]


def test_environment_defaults(monkeypatch):
    monkeypatch.setenv("BANANA_API_KEYS", "a" * 16 + ", " + "b" * 16)
    monkeypatch.setenv("BANANA_MODEL_KEY", "m")
    monkeypatch.setenv("BANANA_STORE", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("BANANA_BACKENDS", "http://a:8000,http://b:8000")
    config = parse_args([])
    assert [k.get_secret_value() for k in config.api_keys] == ["a" * 16, "b" * 16]
    assert config.model_key.get_secret_value() == "m" and config.store.startswith("redis://")
    assert config.backends == ["http://a:8000", "http://b:8000"]


def test_listening_beyond_loopback_without_keys_is_refused_at_start():
    result = subprocess.run([sys.executable, "gateway.py", "--host", "0.0.0.0", "--backend", "http://x:8000"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "listens beyond this machine: give --api-key" in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_key(host):
    assert parse_args(["--host", host, "--backend", "http://x"]).loopback_only()


def test_keys_are_never_printed():
    config = parse_args(["--backend", "http://x", "--api-key", "sk-0123456789abcdef", "--webhook-secret", "whs-456"])
    assert "sk-0123456789abcdef" not in repr(config) and "whs-456" not in repr(config)


@pytest.mark.parametrize("args, message", [
    (["--api-key", ""], "at least 16 characters (one has 0)"),  # --api-key "$KEY" with KEY unset
    (["--api-key", "short-key"], "at least 16 characters (one has 9)"),
    (["--api-key", "a key with spaces!"], "printable ASCII only"),
    (["--webhook-host", "hooks.example.com:http"], "--webhook-host 'hooks.example.com:http'"),
    (["--webhook-host", "https://hooks.example.com/x"], "give a host name or address"),
])
def test_weak_keys_and_invalid_webhook_hosts_are_refused_at_start(args, message):
    result = subprocess.run([sys.executable, "gateway.py", "--host", "0.0.0.0", "--backend", "http://x:8000", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_empty_key_in_the_environment_is_refused_too(monkeypatch):
    monkeypatch.setenv("BANANA_API_KEYS", " , ")  # only separators: no key at all, so loopback rules apply
    assert parse_args(["--backend", "http://x"]).api_keys == []
    with pytest.raises(SystemExit):
        parse_args(["--host", "0.0.0.0", "--backend", "http://x"])


def test_a_flag_replaces_its_environment_variable(monkeypatch):
    monkeypatch.setenv("BANANA_API_KEYS", "a" * 16)
    monkeypatch.setenv("BANANA_STORE", "redis://127.0.0.1:6379/0")
    config = parse_args(["--backend", "http://x", "--api-key", "b" * 16, "--store", "sqlite:///x.db"])
    assert [k.get_secret_value() for k in config.api_keys] == ["b" * 16] and config.store == "sqlite:///x.db"


def test_the_docs_flag_table_says_what_gateway_config_declares():
    rows = [line for line in (ROOT / "docs" / "gateway.md").read_text().splitlines() if line.startswith("| `--")]
    documented = {}
    for row in rows:
        flags_cell, env_cell, default_cell = (cell.strip() for cell in row.split("|")[1:4])
        flags = re.findall(r"`(--[a-z-]+)", flags_cell)
        defaults = [d.strip(" `") for d in default_cell.split(",")] if len(flags) > 1 else [default_cell.strip("`")]
        for flag, default in zip(flags, defaults, strict=True):
            documented[flag] = (re.findall(r"`([A-Z_]+)`", env_cell) or [None])[0], default
    declared = {}
    for name, field in GatewayConfig.model_fields.items():
        extra = field.json_schema_extra
        default = "required" if field.is_required() else field.get_default()
        declared[extra["flag"] or "--" + name.replace("_", "-")] = (extra["env"], default)
    assert set(documented) == set(declared)
    for flag, (env, default) in declared.items():
        doc_env, doc_default = documented[flag]
        assert doc_env == env, flag
        if default in (None, []):
            assert doc_default.startswith("none"), flag
        elif isinstance(default, (int, float)):
            assert float(doc_default) == default, flag
        else:
            assert doc_default == str(default), flag
