"""The cold start: its phases timed, and the weights read while the libraries import.

app.py imports this module first. It notes the clock and starts a thread that reads the model's weight files into
the page cache while the main thread imports torch, diffusers and the server (reading a file releases the GIL; the
imports hold it) and, on a GPU, creates the CUDA context. init() then waits for what is left of the reading and
builds the modules from memory. A new worker reads its weights from a disk or a network volume: that read is the
part of the cold start the imports can hide. Nothing is read ahead when the files would not fit in half the memory
available (the load would read them again) or when the folder is not found (init() says why).

One `cold_start` event, logged when the first request has been answered, and GET /healthz's "cold_start" give the
phases in seconds: `imports` (the process's start to the server's start: the interpreter and every import),
`cuda_init`, `read_weights` (the reading thread's own time, overlapped), `waited_for_weights` (what the imports
did not hide), `build_modules` (from_pretrained and the conversions, the files read), `warm_up`, `ready` (the
process's start to serving) and `first_request`.
"""

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import logs, weights
from .settings import Settings

CHUNK_BYTES = 16 << 20
PHASES = ("imports", "cuda_init", "read_weights", "waited_for_weights", "build_modules", "warm_up", "ready",
          "first_request")


def process_age_s() -> float:
    """Seconds since this process started, from the kernel's own start time (0 where the system does not say)."""
    try:
        with open("/proc/self/stat") as stat:
            started_ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return 0


def files_to_read(settings: Settings) -> list[Path]:
    """The weight files init() will load: the model's (and the ControlNet's) as baked or cached."""
    files = []
    folder = weights.first_guess(settings.model_id, settings.model_places)
    if folder and (folder / "model_index.json").is_file():
        left_out = {"safety_checker"} if not settings.safety_checker else set()
        files += weights.weight_files(folder, left_out | ({"text_encoder_3"} if settings.drop_t5 else set()))
    controlnet = settings.controlnet_id and weights.first_guess(settings.controlnet_id, settings.model_places,
                                                                one_model=True)
    if controlnet and (controlnet / "config.json").is_file():
        files += weights.weight_files(controlnet)
    return files


class ColdStart:
    """The phases of this process's start. One per process (COLD_START)."""

    def __init__(self) -> None:
        self.origin = time.perf_counter() - process_age_s()  # perf_counter's reading at the process's start
        self.phases: dict[str, float | int | str | None] = {}
        self._reader: threading.Thread | None = None
        self._logged = False

    def since_start(self) -> float:
        return time.perf_counter() - self.origin

    def note(self, name: str, seconds: float) -> None:
        self.phases[name] = round(seconds, 3)

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.note(name, time.perf_counter() - started)

    def read_ahead(self, files: list[Path]) -> None:
        """Read `files` into the page cache on a thread of its own, if half the memory available holds them."""
        size = sum(path.stat().st_size for path in files)
        if not files or size > available_bytes() // 2:
            self.phases["read_ahead"] = "skipped: no files found" if not files else \
                f"skipped: {size >> 20} MiB is more than half the memory available"
            return
        self.phases["read_bytes"] = size
        self._reader = threading.Thread(target=self._read, args=(files,), name="read-weights", daemon=True)
        self._reader.start()

    def _read(self, files: list[Path]) -> None:
        started = time.perf_counter()
        view = memoryview(bytearray(CHUNK_BYTES))
        try:
            for path in files:
                with open(path, "rb", buffering=0) as weights_file:
                    while weights_file.readinto(view):
                        pass
        except OSError as error:  # init() loads the same files and says what is wrong with them
            self.phases["read_ahead"] = f"stopped: {type(error).__name__}"
        self.note("read_weights", time.perf_counter() - started)

    def wait_for_weights(self) -> None:
        if self._reader:
            with self.phase("waited_for_weights"):
                self._reader.join()

    def first_request(self, seconds: float) -> None:
        """The first request's time, then the one `cold_start` event with every phase."""
        if not self._logged:
            self._logged = True
            self.note("first_request", seconds)
            logs.event("cold_start", **self.report())

    def report(self) -> dict:
        """Each phase's seconds, in order (None: not (yet) run here), then what was read ahead."""
        return {name: self.phases.get(name) for name in PHASES} | {
            name: value for name, value in self.phases.items() if name not in PHASES}


def begin() -> ColdStart:
    """The clock noted, and the weights' reading started, for the model the environment names."""
    cold_start = ColdStart()
    try:
        settings = Settings.from_env()
    except SystemExit:  # app.py reads the environment too, and stops naming what is wrong
        return cold_start
    try:
        cold_start.read_ahead(files_to_read(settings))
    except Exception as error:  # noqa: BLE001 - only a head start: init() loads the model and says what is wrong
        cold_start.phases["read_ahead"] = f"skipped: {type(error).__name__}"
    return cold_start


COLD_START = begin()
