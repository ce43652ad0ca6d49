"""docker compose cannot run here: check docker-compose.yml's structure, and that it runs what the tests run."""

import yaml

from serverless_sd.gateway.config import parse_args
from testkit.processes import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_redis_gateway_and_gpu_replicas():
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:")
    apps = [name for name in services if name.startswith("app-")]
    assert len(apps) >= 2
    gpus = [services[a]["deploy"]["resources"]["reservations"]["devices"][0] for a in apps]
    assert all(g["capabilities"] == ["gpu"] for g in gpus) and len({g["device_ids"][0] for g in gpus}) == len(apps)
    assert all(services[a]["image"] == services["gateway"]["image"] for a in apps)  # one image, the Dockerfile's


def test_the_gateway_command_is_one_the_tests_run(monkeypatch):
    gateway = compose()["services"]["gateway"]
    command = gateway["command"]
    assert command[:3] == ["python3", "-u", "gateway.py"]
    monkeypatch.setenv("BANANA_API_KEYS", "k" * 16)
    config = parse_args(command[3:])  # the same parser; the tests start gateway.py with these flags
    apps = [name for name in compose()["services"] if name.startswith("app-")]
    assert config.backends == [f"http://{a}:8000" for a in apps]
    assert config.store == "redis://redis:6379/0" and config.host == "0.0.0.0"
    assert "BANANA_API_KEYS" in gateway["environment"] and ":?" in gateway["environment"]["BANANA_API_KEYS"]


def test_apps_are_built_from_the_dockerfile_with_model_id():
    app = compose()["services"]["app-1"]
    assert app["build"]["context"] == "." and "MODEL_ID" in app["build"]["args"]
    assert "command" not in app  # the image's CMD: python3 -u app.py
