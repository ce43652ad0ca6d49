"""The first client to run: generate images through Banana's v4 API (the gateway) and save them.

    python3 test.py --prompt "nightclub"                 # wait for the result in the start call
    python3 test.py --prompt "nightclub" --progress      # start, then poll check, drawing a progress bar
    python3 test.py --prompt "nightclub" --output url    # images stored in the deployment's bucket: their URLs

Reads BANANA_URL (default http://localhost:8080/), BANANA_API_KEY and BANANA_MODEL_KEY, like Banana's own SDK.
With RUNPOD_ENDPOINT_URL (https://api.runpod.ai/v2/ENDPOINT_ID) and RUNPOD_API_KEY, it calls a RunPod Serverless
endpoint instead (docs/deployment.md). Standard library only, so it runs with any Python 3.
"""

import argparse
import base64
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def call(url: str, body: dict | None = None, headers: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def post(route: str, body: dict) -> dict:
    answer = call(os.environ.get("BANANA_URL", "http://localhost:8080/").rstrip("/") + route, body)
    if "error" in answer["message"].lower():
        sys.exit(f"failed: {answer['message']}")
    return answer


def runpod(endpoint: str, inputs: dict) -> dict:
    """RunPod's /runsync, then /status until the job ends; the job's output is what a replica answers."""
    headers = {"Authorization": f"Bearer {os.environ.get('RUNPOD_API_KEY', '')}"}
    job = call(endpoint.rstrip("/") + "/runsync", {"input": inputs}, headers)
    while job["status"] in ("IN_QUEUE", "IN_PROGRESS"):
        time.sleep(1)
        job = call(f"{endpoint.rstrip('/')}/status/{job['id']}", headers=headers)
    if job["status"] != "COMPLETED":
        sys.exit(f"failed: {job['status']}: {job.get('error')}")
    return {"callID": job["id"], "modelOutputs": [job["output"]]}


IMAGES = ("image", "mask_image", "control_image")  # files here, data URIs on the wire
NOT_INPUTS = ("start_only", "progress", "out")  # every other option is a modelInputs field of the same name


def model_inputs(args: argparse.Namespace) -> dict:
    inputs = {name: value for name, value in vars(args).items() if name not in NOT_INPUTS and value is not None}
    return {name: data_uri(value) if name in IMAGES else value for name, value in inputs.items()}


def lora(text: str) -> dict:
    """--lora pixel-art:0.8, --lora owner/repo, --lora https://host/file.safetensors:0.5"""
    source, _, scale = text.rpartition(":")
    try:
        chosen = {"scale": float(scale)}
    except ValueError:
        source, chosen = text, {}
    return {"url" if source.startswith(("https://", "http://")) else "name": source, **chosen}


def data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
    return f"data:{mime.get(path.suffix.lower(), 'image/png')};base64,{base64.b64encode(path.read_bytes()).decode()}"


def wait_with_progress(api_key: str, call_id: str) -> dict:
    started = time.monotonic()
    while True:
        answer = post("/check/v4/", {"apiKey": api_key, "callID": call_id, "longPoll": False})
        if answer["message"].lower() == "success":
            print(file=sys.stderr)
            return answer
        print(f"\r{call_id}: {status_line(answer)}, {time.monotonic() - started:.0f} s", end="", file=sys.stderr,
              flush=True)
        time.sleep(0.5)


def status_line(answer: dict) -> str:
    """Where a job stands: its queue position, or a bar of the steps its replica has done."""
    if answer.get("queuePosition") is not None:
        return f"queue position {answer['queuePosition']}"
    progress = answer.get("progress")
    if not progress:
        return answer.get("state", "running")
    done = round(30 * progress["step"] / progress["total_steps"])
    left = f", {progress['eta_s']:.0f} s left" if progress.get("eta_s") is not None else ""
    return f"[{'#' * done}{'.' * (30 - done)}] step {progress['step']}/{progress['total_steps']}{left}"


def save(outputs: list[dict], out_dir: Path, call_id: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for output in outputs:
        seeds = output.get("seeds", [output.get("seed")])
        if "image_urls" in output:  # output "url": fetched from the deployment's bucket
            for url, seed in zip(output["image_urls"], seeds, strict=True):
                print(url)
                with urllib.request.urlopen(url, timeout=120) as response:
                    path = out_dir / f"{call_id}-{seed}.{EXTENSIONS[response.headers.get_content_type()]}"
                    path.write_bytes(response.read())
                paths.append(path)
            continue
        for uri, seed in zip(output.get("images", [output["image_base64"]]), seeds, strict=True):
            header, payload = uri.split(",", 1)
            path = out_dir / f"{call_id}-{seed}.{EXTENSIONS[header[5:].split(';')[0]]}"
            path.write_bytes(base64.b64decode(payload))
            paths.append(path)
    return paths


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting",
                        help='SD 1.x/2.x and SDXL: any length; weights as "a (red:1.3) door" or "a red++ door"')
    parser.add_argument("--negative-prompt", dest="negative_prompt")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", dest="num_inference_steps", type=int)
    parser.add_argument("--guidance", dest="guidance_scale", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-images", dest="num_images", type=int)
    parser.add_argument("--format", dest="output_format", choices=["png", "jpeg", "webp"])
    parser.add_argument("--scheduler", help='e.g. euler_a, dpm++_2m_karras, "DPM++ 2M Karras", lcm, flow_euler')
    parser.add_argument("--clip-skip", dest="clip_skip", type=int, help="AUTOMATIC1111's Clip skip (2: penultimate)")
    parser.add_argument("--lora", dest="loras", type=lora, action="append",
                        help="NAME[:SCALE] (repeat for several): a LoRA the deployment has (GET /loras), a hub id or "
                             "a URL it may fetch")
    parser.add_argument("--image", type=Path, help="img2img: the starting picture (PNG, JPEG or WebP file)")
    parser.add_argument("--mask", dest="mask_image", type=Path, help="inpainting, with --image: white = repaint")
    parser.add_argument("--strength", type=float, help="img2img/inpainting: how much to change (0-1]")
    parser.add_argument("--control-image", dest="control_image", type=Path, help="ControlNet's conditioning image")
    parser.add_argument("--control-scale", dest="controlnet_conditioning_scale", type=float)
    parser.add_argument("--output", choices=["base64", "url"],
                        help="url: the images stored in the deployment's bucket (S3_BUCKET), answered as URLs")
    parser.add_argument("--start-only", action="store_true", help="start, then poll check until done")
    parser.add_argument("--progress", action="store_true", help="start, then poll check, drawing a progress bar")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="where images are written")
    return parser


def banana(args: argparse.Namespace) -> dict:
    api_key = os.environ.get("BANANA_API_KEY", "")
    start = {"apiKey": api_key, "modelKey": os.environ.get("BANANA_MODEL_KEY", ""),
             "startOnly": args.start_only or args.progress, "modelInputs": model_inputs(args)}
    answer = post("/start/v4/", start)
    return answer if answer["finished"] else wait_with_progress(api_key, answer["callID"])


def main() -> None:
    args = options().parse_args()
    endpoint = os.environ.get("RUNPOD_ENDPOINT_URL")
    try:
        answer = runpod(endpoint, model_inputs(args)) if endpoint else banana(args)
    except OSError as error:
        sys.exit(f"failed: cannot reach {endpoint or os.environ.get('BANANA_URL', 'http://localhost:8080/')}: {error}")
    for path in save(answer["modelOutputs"], args.out, answer.get("callID", "call")):
        print(path)


if __name__ == "__main__":
    main()
