"""A running request's progress on GET /progress: steps, seconds left, previews, over HTTP from a real app."""

import base64
import io
import threading
import time

import httpx
from PIL import Image

from serverless_sd.progress import Progress, Tracker

LONG = {"prompt": "a lighthouse", "num_inference_steps": 60, "seed": 3}  # about 1.5 s on the tiny model


def watch(app, inputs: dict, request_id: str) -> tuple[list[dict], httpx.Response]:
    """POST inputs and read GET /progress until the answer comes: every distinct snapshot seen, and the answer."""
    answer: list[httpx.Response] = []
    post = threading.Thread(target=lambda: answer.append(app.post(inputs, headers={"X-Banana-Request-Id": request_id})))
    post.start()
    seen: list[dict] = []
    while post.is_alive():
        snapshot = httpx.get(f"{app.url}/progress", timeout=10).json()
        if snapshot["running"] and (not seen or snapshot != seen[-1]):
            seen.append(snapshot)
        time.sleep(0.01)
    post.join()
    return seen, answer[0]


def preview_image(snapshot: dict) -> Image.Image:
    header, _, payload = snapshot["preview"].partition(",")
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_progress_counts_the_steps_of_the_running_request_and_ends_with_it(preview_app):
    seen, answer = watch(preview_app, LONG, "progress-1")
    assert answer.status_code == 200
    assert len(seen) >= 3, seen  # the poller saw the run at several steps, not only its end
    assert {s["request_id"] for s in seen} == {"progress-1"}
    steps = [s["step"] for s in seen]
    assert steps == sorted(steps) and steps[-1] <= seen[-1]["total_steps"]
    assert {s["total_steps"] for s in seen if s["step"]} == {LONG["num_inference_steps"] + 1}  # PNDM's schedule
    later = [s for s in seen if s["step"] >= 2]
    assert later[-1]["eta_s"] < later[0]["eta_s"] and later[-1]["elapsed_s"] > later[0]["elapsed_s"]
    for snapshot in seen:
        Progress.model_validate(snapshot)
    assert httpx.get(f"{preview_app.url}/progress").json() == {"running": False}
    assert "GET /progress" not in preview_app.logs()  # polled twice a second by a gateway: not logged each time


def test_previews_come_every_n_steps_small_and_changing(preview_app):
    seen, _ = watch(preview_app, LONG, "progress-2")
    with_preview = [s for s in seen if s["preview"]]
    assert with_preview and not [s for s in seen if s["step"] < 2 and s["preview"]]
    sizes = {preview_image(s).size for s in with_preview}
    assert sizes == {(32, 32)}  # the 64x64 image, made at most PREVIEW_SIDE (32 here) a side
    assert len({s["preview"] for s in with_preview}) > 1  # the picture moves as the steps go


def test_a_preview_is_the_first_image_as_it_stands():
    """Without a decoder no preview is made; with one it is made every N steps only, never at the last."""
    calls = []

    class Pipe:
        num_timesteps = 6

    tracker = Tracker(lambda pipe, latents, size: calls.append(size) or "data:image/jpeg;base64,", every=2)
    tracker.begin("r", (64, 48))
    for step in range(6):
        tracker.step(Pipe(), step, None, {"latents": None})
    assert calls == [(64, 48)] * 2  # after steps 2 and 4; not 6, the last, which the answer shows
    assert tracker.snapshot()["step"] == 6 and tracker.snapshot()["eta_s"] == 0
    tracker.end()
    assert tracker.snapshot() == {"running": False}
    plain = Tracker()
    plain.begin("r", (64, 48))
    plain.step(Pipe(), 0, None, {"latents": None})
    assert plain.snapshot()["preview"] is None and plain.snapshot()["total_steps"] == 6


def test_a_preview_that_fails_leaves_the_request_alone():
    class Pipe:
        num_timesteps = 4

    def broken(pipe, latents, size):
        raise RuntimeError("out of memory in the decoder")

    tracker = Tracker(broken, every=1)
    tracker.begin("r", (64, 64))
    tensors = {"latents": object()}
    assert tracker.step(Pipe(), 0, None, tensors) is tensors
    assert tracker.snapshot()["step"] == 1 and tracker.snapshot()["preview"] is None


def test_progress_without_previews_costs_no_decoder(sd_app):
    seen, answer = watch(sd_app, LONG, "progress-3")
    assert answer.status_code == 200 and seen and not [s for s in seen if s["preview"]]


def test_a_decoder_for_other_latents_is_refused_at_start(start_app, models):
    app = start_app({"MODEL_ID": str(models["sd"]), "PREVIEW_EVERY": "2", "PREVIEW_DECODER": str(models["taef1"])},
                    wait=False)
    assert app.proc.wait(120) != 0
    assert "PREVIEW_DECODER" in app.logs() and "16-channel" in app.logs() and "Traceback" not in app.logs()


def test_a_decoder_not_baked_is_named_at_start(start_app, models, tmp_path):
    app = start_app({"MODEL_ID": str(models["sd"]), "PREVIEW_EVERY": "2", "MODELS_DIR": str(tmp_path)}, wait=False)
    assert app.proc.wait(120) != 0
    assert "PREVIEW_DECODER 'madebyollin/taesd' is not in" in app.logs() and "download.py" in app.logs()


class LaggingGpu:
    """Stands in for a GPU that runs behind the CPU queuing its work: a step's work is done only once an event after
    it has been waited on (CUDA's event.synchronize)."""

    def __init__(self):
        self.queued = self.done = 0

    def event(self, latents):
        self.queued += 1
        gpu, upto = self, self.queued

        class Event:
            def synchronize(self):
                gpu.done = max(gpu.done, upto)

        return Event()


def test_on_a_gpu_the_steps_told_are_those_it_has_run():
    """The callback comes as the CPU queues a step; CUDA graphs and schedulers that never wait on the GPU let the
    CPU queue every step ahead: told from the callback alone, progress reached N/N, ETA 0, with the GPU mid-way."""
    gpu, tracker = LaggingGpu(), Tracker()
    tracker._event_after = gpu.event
    tracker.begin("on-gpu", (64, 64))
    pipe = type("Pipe", (), {"num_timesteps": 5})()
    told = []
    for step in range(5):
        tracker.step(pipe, step, None, {"latents": None})
        told.append(tracker.snapshot()["step"])
        assert told[-1] <= gpu.done < gpu.queued  # never more than the GPU has run; one step stays queued
    assert told == [0, 1, 2, 3, 4] and tracker.snapshot()["eta_s"] is not None


def test_on_the_cpu_a_step_is_told_as_soon_as_it_ends():
    tracker = Tracker()
    tracker.begin("on-cpu", (64, 64))
    pipe = type("Pipe", (), {"num_timesteps": 3})()
    told = [(tracker.step(pipe, step, None, {"latents": None}), tracker.snapshot()["step"])[1] for step in range(3)]
    assert told == [1, 2, 3] and tracker.snapshot()["eta_s"] == 0
