"""GET /metrics in Prometheus' text format: jobs by state and model key, latency histograms, replica health.

Model keys are credential-like, so they appear only as the first 8 hex digits of their SHA-256.
"""

import hashlib

from .jobs import Job

BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, float("inf"))


class Metrics:
    """Histograms of the jobs this gateway saw end (queue wait and run time), since it started."""

    def __init__(self):
        self.histograms = {name: [0] * len(BUCKETS) for name in ("queued", "run")}
        self.sums = {name: 0.0 for name in self.histograms}
        self.count = 0
        self.waiting = 0  # requests held open (sync start, long poll) right now

    def observe(self, job: Job) -> None:
        timings = job.timings()
        self.count += 1
        for name, seconds in (("queued", timings["queued_s"]), ("run", timings.get("run_s", 0.0))):
            self.sums[name] += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.histograms[name][i] += 1

    def render(self, counts: dict[tuple[str, str], int], backends: dict[str, bool]) -> str:
        lines = ["# HELP sd_gateway_jobs Jobs in the store, by state and model key (sha256 prefix).",
                 "# TYPE sd_gateway_jobs gauge"]
        for (state, model_key), n in sorted(counts.items()):
            lines.append(f'sd_gateway_jobs{{state="{state}",model_key="{_label(model_key)}"}} {n}')
        lines += ["# HELP sd_gateway_queue_length Jobs waiting for a replica, by model key.",
                  "# TYPE sd_gateway_queue_length gauge"]
        queued: dict[str, int] = {}
        for (state, model_key), n in counts.items():
            if state == "queued":
                queued[_label(model_key)] = queued.get(_label(model_key), 0) + n
        lines += [f'sd_gateway_queue_length{{model_key="{key}"}} {n}' for key, n in sorted(queued.items())]
        for name, help_text in (("queued", "waited in the queue"), ("run", "ran on a replica")):
            metric = f"sd_gateway_job_{name}_seconds"
            lines += [f"# HELP {metric} How long each ended job {help_text}.", f"# TYPE {metric} histogram"]
            for bound, n in zip(BUCKETS, self.histograms[name]):
                lines.append(f'{metric}_bucket{{le="{"+Inf" if bound == float("inf") else bound}"}} {n}')
            lines += [f"{metric}_sum {self.sums[name]:.3f}", f"{metric}_count {self.count}"]
        lines += ["# HELP sd_gateway_requests_waiting Requests held open for a result (sync start, long poll).",
                  "# TYPE sd_gateway_requests_waiting gauge", f"sd_gateway_requests_waiting {self.waiting}"]
        lines += ["# HELP sd_gateway_backend_up 1 when the replica answers its status as idle and ready.",
                  "# TYPE sd_gateway_backend_up gauge"]
        lines += [f'sd_gateway_backend_up{{backend="{url}"}} {int(up)}' for url, up in backends.items()]
        return "\n".join(lines) + "\n"


def _label(model_key: str) -> str:
    return hashlib.sha256(model_key.encode()).hexdigest()[:8]
