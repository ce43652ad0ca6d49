"""A running request's progress: what the app answers on GET /progress and the gateway relays in /check/v4.

The pipeline calls Tracker.step after each denoising step (diffusers' callback_on_step_end), on the thread that
generates; GET /progress reads the last snapshot from another thread. A snapshot is one object (a tuple) replaced
whole, so a reader never sees half of one.

On a GPU the callback runs when the CPU has queued a step, not when the GPU has run it: with CUDA graphs and a
scheduler that never waits on the GPU (SDXL's Euler, flow matching, DPM++) the CPU can queue every step ahead, and the
count would reach N/N, ETA 0, while the GPU still works. So each step's end is marked with a CUDA event, the callback
waits on the previous step's, and it tells the steps the GPU has finished: one step stays queued.
"""

import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from . import logs

MAX_PREVIEW_CHARS = 256 * 1024  # a preview is a small JPEG; the gateway refuses to store anything larger


class Progress(BaseModel):
    """One running request's progress, as /check/v4 answers it."""

    step: int = Field(ge=0, description="denoising steps done")
    total_steps: int = Field(ge=1, description="denoising steps this request runs (img2img: steps x strength)")
    elapsed_s: float = Field(ge=0, description="since the request began")
    eta_s: float | None = Field(None, ge=0, description="seconds left, from the steps' pace (none before the first)")
    preview: str | None = Field(None, max_length=MAX_PREVIEW_CHARS,
                                description="the first image as it stands, a data:image/jpeg URI (PREVIEW_EVERY)")


class Tracker:
    """The progress of the one request a replica runs at a time."""

    def __init__(self, preview: Callable | None = None, every: int = 0):
        self.preview = preview  # (pipe, latents, (width, height)) -> data URI, or None: no previews
        self.every = every
        self.current: tuple[str, Progress] | None = None  # the request's X-Banana-Request-Id (callID), its progress
        self._started = self._first_done = 0.0
        self._size = (0, 0)
        self._last_event = None  # on a GPU: the CUDA event at the end of the last step queued

    def begin(self, request_id: str, size: tuple[int, int]) -> None:
        self._started = time.perf_counter()
        self._size = size
        self._last_event = None
        self.current = (request_id[:64], Progress(step=0, total_steps=1, elapsed_s=0))

    def end(self) -> None:
        self.current = None

    def step(self, pipe, step: int, timestep, tensors: dict) -> dict:
        """diffusers' callback_on_step_end: called after step `step` (from 0), with the tensors it asked for."""
        if self.current is None:
            return tensors
        request_id, current = self.current
        done = self._finished(step, tensors.get("latents"))
        now = time.perf_counter()
        total = max(getattr(pipe, "num_timesteps", 0) or 0, step + 1)
        if done == 1:
            self._first_done = now
        # The first step also pays for the prompt's encoding and the set-up: the pace is read from the later ones.
        pace = (now - self._first_done) / (done - 1) if done > 1 else now - self._started
        preview = current.preview
        if self.preview is not None and self.every and done and done % self.every == 0 and done < total:
            try:  # not at the end: the image itself follows
                preview = self.preview(pipe, tensors["latents"], self._size)
            except Exception as error:  # noqa: BLE001 - a preview is a courtesy: the image it shows goes on
                logs.event("preview_error", error=type(error).__name__)
        self.current = (request_id, Progress(step=done, total_steps=total, elapsed_s=round(now - self._started, 3),
                                             eta_s=round(pace * (total - done), 3) if done else None,
                                             preview=preview))
        return tensors

    def _finished(self, step: int, latents) -> int:
        """The steps the device has run: on the CPU, this one too (a step ends before its callback); on a GPU, those
        before it, once the previous step's event has passed."""
        event = self._event_after(latents)
        if event is None:
            return step + 1
        previous, self._last_event = self._last_event, event
        if previous is not None:
            previous.synchronize()
        return step

    @staticmethod
    def _event_after(latents):
        """A CUDA event recorded after the work queued so far; None off CUDA, where the work is done already."""
        if getattr(getattr(latents, "device", None), "type", None) != "cuda":
            return None
        import torch  # loaded already where a model runs; the gateway imports Progress alone

        event = torch.cuda.Event()
        event.record()
        return event

    def snapshot(self) -> dict:
        """What GET /progress answers: {"running": false}, or the running request's id and Progress."""
        current = self.current
        if current is None:
            return {"running": False}
        return {"running": True, "request_id": current[0], **current[1].model_dump()}
