"""The clients users already have, unchanged, against the self-hosted gateway and app: test.py, Postman (via
newman), and Banana's own Python SDKs (banana-dev 4.x through the gateway, 6.x straight to a replica)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from PIL import Image

from testkit.processes import ROOT, free_port, spawn

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}
KEYS = ("--api-key", "test-key-0123456789", "--model-key", "test-model")


@pytest.fixture(scope="module")
def gateway(start_gateway, controlnet_app):
    return start_gateway([controlnet_app.url], *KEYS)


@pytest.fixture(scope="module")
def default_gateway(start_gateway, sd_app):
    """A deployment as a new user makes it: no CONTROLNET_ID."""
    return start_gateway([sd_app.url], *KEYS)


def run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def client_env(gateway, api_key: str = "test-key-0123456789") -> dict:
    return {"BANANA_URL": gateway.url + "/", "BANANA_API_KEY": api_key, "BANANA_MODEL_KEY": "test-model"}


@pytest.mark.parametrize("mode", [[], ["--start-only"]])
def test_test_py_writes_every_image_as_a_png_and_prints_its_path(gateway, tmp_path, mode):
    result = run([sys.executable, "test.py", "--steps", "1", "--num-images", "2", "--seed", "9",
                  "--out", str(tmp_path), *mode], client_env(gateway))
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert sorted(path.rsplit("-", 1)[1] for path in paths) == ["10.png", "9.png"]
    for path in paths:
        image = Image.open(path)
        assert image.format == "PNG" and image.size == (64, 64)


@pytest.mark.parametrize("flags", [
    ["--image", "IMAGE", "--strength", "0.6", "--scheduler", "Euler a"],
    ["--image", "IMAGE", "--mask", "MASK"],
    ["--control-image", "IMAGE", "--control-scale", "0.5"],
])
def test_test_py_sends_images_for_each_mode(gateway, tmp_path, flags):
    Image.new("RGB", (72, 64), (10, 200, 30)).save(tmp_path / "in.png")
    Image.new("L", (72, 64), 255).save(tmp_path / "mask.png")
    files = {"IMAGE": str(tmp_path / "in.png"), "MASK": str(tmp_path / "mask.png")}
    result = run([sys.executable, "test.py", "--steps", "2", "--out", str(tmp_path / "out"),
                  *[files.get(f, f) for f in flags]], client_env(gateway))
    assert result.returncode == 0, result.stderr
    assert Image.open(result.stdout.split()[0]).size == (72, 64)  # each mode takes its input image's size


def test_test_py_shows_progress_while_it_waits(gateway, tmp_path):
    result = run([sys.executable, "test.py", "--steps", "60", "--start-only", "--out", str(tmp_path)],
                 client_env(gateway))
    assert result.returncode == 0, result.stderr
    assert re.search(r"call_[0-9a-f-]{36}: (queue position \d+|running|queued|\[[#.]{30}\] .*), \d+ s",
                     result.stderr)


def test_test_py_progress_draws_a_bar_of_the_replicas_steps(gateway, tmp_path):
    result = run([sys.executable, "test.py", "--steps", "120", "--progress", "--out", str(tmp_path)],
                 client_env(gateway))
    assert result.returncode == 0, result.stderr
    bars = re.findall(r"\[([#.]{30})\] step (\d+)/121, (\d+) s left", result.stderr)
    assert bars and [int(step) for _, step, _ in bars] == sorted(int(step) for _, step, _ in bars)
    assert Image.open(result.stdout.split()[0]).format == "PNG"


def test_test_py_output_url_prints_the_urls_and_saves_the_images(start_gateway, start_app, models, s3, tmp_path):
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env(s3.bucket("test-py"))})
    gateway = start_gateway([app.url], *KEYS)
    result = run([sys.executable, "test.py", "--steps", "1", "--num-images", "2", "--output", "url",
                  "--out", str(tmp_path)], client_env(gateway))
    assert result.returncode == 0, result.stderr
    urls = [line for line in result.stdout.split() if line.startswith("http://")]
    paths = [line for line in result.stdout.split() if not line.startswith("http://")]
    assert len(urls) == 2 and all(f"{s3.url}/test-py/" in url for url in urls)
    assert [Image.open(path).format for path in paths] == ["PNG", "PNG"]


@pytest.mark.parametrize("args, env, message", [
    (["--width", "500"], {}, "failed: error: width: must be a multiple of 8"),
    ([], {"BANANA_API_KEY": "wrong"}, "failed: error: invalid apiKey"),
    ([], {"BANANA_URL": "http://127.0.0.1:9/"}, "failed: cannot reach"),
])
def test_test_py_exits_non_zero_with_the_servers_message(gateway, tmp_path, args, env, message):
    result = run([sys.executable, "test.py", "--steps", "1", "--out", str(tmp_path), *args],
                 {**client_env(gateway), **env})
    assert result.returncode != 0 and message in result.stderr and not list(tmp_path.iterdir())


def newman(gateway, api_key: str, collection: str = "postman_collection.json") -> subprocess.CompletedProcess:
    return run([str(ROOT / "node_modules" / ".bin" / "newman"), "run", collection, "--env-var",
                f"baseUrl={gateway.url}", "--env-var", f"apiKey={api_key}", "--env-var", "modelKey=test-model",
                "--reporters", "cli"], {})


def test_the_postman_collection_runs_green_against_a_default_deployment(default_gateway):
    result = newman(default_gateway, "test-key-0123456789")
    assert result.returncode == 0, result.stdout[-3000:]
    for name in ("Start (wait for result)", "Start (startOnly)", "Progress", "Check", "Weighted long prompt, few steps",
                 "LoRAs", "Inputs", "Img2img", "Inpainting"):
        assert f"→ {name}" in result.stdout
    assert "POST" not in lora_request(result)  # no LoRA baked: the request is skipped, not failed
    assert "POST" not in request_of(result, "Images as URLs")  # no bucket: skipped likewise


def test_the_postman_collection_runs_a_lora_where_the_deployment_has_one(gateway):
    result = newman(gateway, "test-key-0123456789")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "POST" in lora_request(result)


def test_the_postman_collection_asks_for_urls_where_the_deployment_has_a_bucket(start_gateway, start_app, models,
                                                                                s3):
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env(s3.bucket("postman"))})
    result = newman(start_gateway([app.url], *KEYS), "test-key-0123456789")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "POST" in request_of(result, "Images as URLs") and s3.keys("postman")


def lora_request(result: subprocess.CompletedProcess) -> str:
    return request_of(result, "With a LoRA")


def request_of(result: subprocess.CompletedProcess, name: str) -> str:
    """What newman printed for one request: up to the next one."""
    return result.stdout.split(f"→ {name}", 1)[1].split("→ ", 1)[0]


def test_the_controlnet_collection_runs_green_against_a_controlnet_deployment(gateway):
    result = newman(gateway, "test-key-0123456789", "postman_collection_controlnet.json")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "→ Img2img" in result.stdout and "→ ControlNet" in result.stdout


def test_the_postman_collection_fails_on_an_error_message(default_gateway):
    result = newman(default_gateway, "not-the-key")
    assert result.returncode != 0 and "no error" in result.stdout


def test_the_postman_collection_is_v2_1_with_the_documented_variables():
    collection = json.loads((ROOT / "postman_collection.json").read_text())
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    assert {v["key"] for v in collection["variable"]} >= {"baseUrl", "apiKey", "modelKey", "callID"}
    names = [item["name"] for item in collection["item"]]
    assert names[:4] == ["Start (wait for result)", "Start (startOnly)", "Progress", "Check"]


# The original template's test.py, as the issue tracker quotes it: modelInputs straight to the replica, and
# image_base64 through base64.b64decode as it is.
ORIGINAL_CLIENT = """
import base64, sys
from io import BytesIO
import requests
from PIL import Image
model_inputs = {"prompt": "realistic field of grass", "negative": "", "num_inference_steps": 50, "guidance_scale": 7.5}
res = requests.post(sys.argv[1], json=model_inputs)
image_byte_string = res.json()["image_base64"]
image = Image.open(BytesIO(base64.b64decode(image_byte_string.encode("utf-8"))))
image.save(sys.argv[2])
"""


def test_the_original_templates_client_fails_on_data_uris_by_default(sd_app, tmp_path):
    url = sd_app.url.replace("127.0.0.1", "localhost") + "/"
    result = run([sys.executable, "-c", ORIGINAL_CLIENT, url, str(tmp_path / "output.jpg")], {})
    assert result.returncode != 0 and "binascii.Error" in result.stderr  # 'Incorrect padding', or the like


def test_the_original_templates_client_works_unchanged_with_image_base64_plain(start_app, models, tmp_path):
    app = start_app({"MODEL_ID": str(models["sd"]), "IMAGE_BASE64": "plain"})
    url = app.url.replace("127.0.0.1", "localhost") + "/"
    result = run([sys.executable, "-c", ORIGINAL_CLIENT, url, str(tmp_path / "output.jpg")], {})
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "output.jpg").size == (64, 64)
    answer = app.post({"prompt": "a", "num_inference_steps": 1}).json()
    assert answer["images"][0].startswith("data:image/png;base64,")  # only the original's field changes
    assert answer["images"][0].endswith(answer["image_base64"])


def sdk(version: int, code: str, env: dict) -> subprocess.CompletedProcess:
    sdk_path = ROOT / ".venv" / "sdk" / f"banana-dev-{version}"
    return run([sys.executable, "-c", textwrap.dedent(code)], {**env, "PYTHONPATH": str(sdk_path)}, timeout=120)


def test_banana_dev_4_run_start_and_check_through_the_gateway(gateway):
    result = sdk(4, f"""
        import json, banana_dev as banana
        out = banana.run("test-key-0123456789", "test-model", {json.dumps(FAST)})
        call_id = banana.start("test-key-0123456789", "test-model", {json.dumps({**FAST, "seed": 5})})
        while (checked := banana.check("test-key-0123456789", call_id))["message"] != "success":
            pass
        print(json.dumps({{"run": out, "check": checked}}))
    """, {"BANANA_URL": gateway.url + "/"})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["run"]["message"] == "success" and answer["run"]["modelOutputs"][0]["image_base64"]
    assert answer["check"]["modelOutputs"][0]["seeds"] == [5]


def test_banana_dev_4_raises_the_gateways_error_message(gateway):
    result = sdk(4, """
        import banana_dev as banana
        banana.run("test-key-0123456789", "test-model", {"prompt": "a", "width": 500})
    """, {"BANANA_URL": gateway.url + "/"})
    assert result.returncode != 0 and "error: width: must be a multiple of 8" in result.stderr


def test_banana_dev_6_client_calls_a_replica_directly(sd_app):
    result = sdk(6, f"""
        import json
        from banana_dev import Client
        out, meta = Client(api_key="any", url="{sd_app.url}", verbosity="INFO").call("/", {json.dumps(FAST)})
        warm, _ = Client(api_key="any", url="{sd_app.url}", verbosity="INFO").warmup()
        print(json.dumps({{"out": out, "warm": warm}}))
    """, {})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["out"]["image_base64"].startswith("data:image/png;base64,") and answer["warm"] == {"warm": True}


def test_banana_dev_6_raises_at_once_on_a_bad_input_instead_of_retrying(sd_app):
    started = time.monotonic()
    result = sdk(6, f"""
        from banana_dev import Client
        Client(api_key="any", url="{sd_app.url}", verbosity="INFO").call("/", {{"prompt": "a", "width": 500}})
    """, {})
    assert result.returncode != 0 and "422" in result.stderr
    assert time.monotonic() - started < 60  # a 400 would have been retried for 5 minutes


def test_make_demo_serves_the_whole_path_with_no_download(tmp_path):
    app_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "MODELS_DIR": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)  # as a newcomer's shell: nothing switches the hub off, it is just unreachable
    demo = spawn(["make", "demo", f"APP_PORT={app_port}", f"GATEWAY_PORT={gateway_port}"], cwd=ROOT, env=env,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        body = {"apiKey": "", "modelKey": "", "modelInputs": {"prompt": "a", "num_inference_steps": 1}}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                answer = httpx.post(f"http://127.0.0.1:{gateway_port}/start/v4/", json=body, timeout=60).json()
                if answer["message"] == "success":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert answer["message"] == "success", answer
        assert answer["modelOutputs"][0]["image_base64"].startswith("data:image/png;base64,")
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        output = demo.communicate(timeout=30)[0]
    assert "RANDOM weights, every image is noise" in output
