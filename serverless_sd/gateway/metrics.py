"""GET /metrics in Prometheus' text format: jobs queued and running, jobs ended, latency histograms, replica health.

Cheap by design (a scrape reads numbers kept in memory, never the store) and keyed like the API. Model keys are
credential-like and unbounded in number, so no label carries one or a digest of one.
"""

from .jobs import Job, work

BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, float("inf"))


class Metrics:
    """Histograms of the jobs this gateway saw end (queue wait and run time), since it started."""

    def __init__(self):
        self.histograms = {name: [0] * len(BUCKETS) for name in ("queued", "run")}
        self.sums = {name: 0.0 for name in self.histograms}
        self.count = 0
        self.ended: dict[str, int] = {}
        self.waiting = 0  # requests held open (sync start, long poll) right now

    def observe(self, job: Job) -> None:
        timings = job.timings()
        self.count += 1
        self.ended[job.state] = self.ended.get(job.state, 0) + 1
        for name, seconds in (("queued", timings["queued_s"]), ("run", timings.get("run_s", 0.0))):
            self.sums[name] += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.histograms[name][i] += 1

    def mean_run_s(self) -> float | None:
        """How long the jobs this gateway saw end ran, on average (None before the first)."""
        return self.sums["run"] / self.count if self.count else None

    def render(self, counts: dict[str, int], backends: dict[str, bool]) -> str:
        lines = ["# HELP sd_gateway_jobs Jobs in the store now, by state (every gateway's).",
                 "# TYPE sd_gateway_jobs gauge"]
        lines += [f'sd_gateway_jobs{{state="{state}"}} {n}' for state, n in sorted(counts.items())]
        lines += ["# HELP sd_gateway_queue_length Jobs waiting for a replica.", "# TYPE sd_gateway_queue_length gauge",
                  f"sd_gateway_queue_length {counts.get('queued', 0)}"]
        lines += ["# HELP sd_gateway_work Jobs queued and running: the scale signal (as GET /scale says it).",
                  "# TYPE sd_gateway_work gauge",
                  f"sd_gateway_work {work(counts)}"]
        lines += ["# HELP sd_gateway_jobs_ended_total Jobs this gateway saw end, by outcome.",
                  "# TYPE sd_gateway_jobs_ended_total counter"]
        lines += [f'sd_gateway_jobs_ended_total{{state="{state}"}} {n}' for state, n in sorted(self.ended.items())]
        for name, help_text in (("queued", "waited in the queue"), ("run", "ran on a replica")):
            metric = f"sd_gateway_job_{name}_seconds"
            lines += [f"# HELP {metric} How long each ended job {help_text}.", f"# TYPE {metric} histogram"]
            for bound, n in zip(BUCKETS, self.histograms[name], strict=True):
                lines.append(f'{metric}_bucket{{le="{"+Inf" if bound == float("inf") else bound}"}} {n}')
            lines += [f"{metric}_sum {self.sums[name]:.3f}", f"{metric}_count {self.count}"]
        lines += ["# HELP sd_gateway_requests_waiting Requests held open for a result (sync start, long poll).",
                  "# TYPE sd_gateway_requests_waiting gauge", f"sd_gateway_requests_waiting {self.waiting}"]
        lines += ["# HELP sd_gateway_backend_up 1 when the replica answers its status as idle and ready.",
                  "# TYPE sd_gateway_backend_up gauge"]
        lines += [f'sd_gateway_backend_up{{backend="{url}"}} {int(up)}' for url, up in backends.items()]
        return "\n".join(lines) + "\n"
