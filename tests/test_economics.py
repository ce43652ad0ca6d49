"""bench/economics.py: the month's replay, and the README table and shipped defaults that come from it."""

import math
import re

import yaml

from bench import economics
from bench.economics import IMAGES_PER_MONTH, MONTH_S, Way, replay
from testkit.processes import ROOT


def gpu() -> tuple[str, list[dict]]:
    machine, result = next(iter(economics.simulate().items()))
    return machine, result["ways"]


def test_the_trace_is_the_seeds_month_drawn_the_same_way_each_time():
    trace = economics.sessions()
    assert sum(images for _, images in trace) == IMAGES_PER_MONTH
    assert all(0 <= start < MONTH_S for start, _ in trace)
    assert trace == economics.sessions() != economics.sessions(seed=1)
    evening = sum(images for start, images in trace if 18 <= start % 86400 / 3600 < 23)
    assert evening > IMAGES_PER_MONTH / 2  # most images in the evening, as a site's users make them
    assert 3 < IMAGES_PER_MONTH / len(trace) < 5  # sessions of a few images


def test_a_worker_is_billed_from_its_start_to_its_idle_timeout():
    image_s, cold_s = 1.0, 10.0
    always = replay(economics.WAYS[0], image_s, cold_s)
    assert always["billed_s"] == MONTH_S and always["later_image_wait_s"]["p50"] == image_s
    tight = replay(Way("t", 0.0), image_s, cold_s)
    # Idle timeout 0: a cold start for every image, and nothing billed beyond the work and the starts.
    assert tight["first_image_wait_s"]["p50"] == tight["later_image_wait_s"]["p50"] == cold_s + image_s
    assert tight["billed_s"] <= IMAGES_PER_MONTH * math.ceil(cold_s + image_s)
    assert tight["billed_s"] >= IMAGES_PER_MONTH * (cold_s + image_s)
    # An hour's timeout keeps the worker through a session: one cold start per session at most.
    long = replay(Way("l", 3600.0), image_s, cold_s)
    assert long["later_image_wait_s"]["p50"] == image_s and long["first_image_wait_s"]["p95"] <= cold_s + image_s
    assert long["billed_s"] > tight["billed_s"]
    assert replay(Way("f", 0.0, "flashboot"), image_s, cold_s)["billed_s"] < tight["billed_s"]


def test_a_longer_idle_timeout_bills_more_and_never_makes_a_user_wait_longer():
    image_s, cold_s = economics.measured()[gpu()[0]].values()
    previous = None
    for idle in (1, 5, 30, 60, 300):
        result = replay(Way(str(idle), idle), image_s, cold_s)
        if previous:
            assert result["billed_s"] > previous["billed_s"]
            assert result["later_image_wait_s"]["p50"] <= previous["later_image_wait_s"]["p50"]
        previous = result


def test_keda_sees_a_job_only_at_its_poll():
    image_s, cold_s = 1.0, 10.0
    polled = replay(Way("k", 30.0, detect_s=5.0, engine="keda"), image_s, cold_s)
    at_once = replay(Way("r", 30.0), image_s, cold_s)
    assert at_once["first_image_wait_s"]["p50"] < polled["first_image_wait_s"]["p50"] <= cold_s + image_s + 5.0
    assert polled["billed_s"] > at_once["billed_s"]  # and a pod lingers to the poll after its cooldown


def test_readme_and_benchmarks_carry_the_tables_the_simulation_makes():
    readme, benchmarks = (ROOT / "README.md").read_text(), (ROOT / "BENCHMARKS.md").read_text()
    machine, ways = gpu()
    assert economics.readme_table(machine, ways) in readme
    for machine, result in economics.simulate().items():
        assert economics.table(machine, result["ways"]) in benchmarks


def test_the_shipped_defaults_are_the_ones_the_simulation_finds_best():
    _, ways = gpu()
    runpod, keda = economics.best(ways, "runpod"), economics.best(ways, "keda")
    by_name = {r["way"]: r for r in ways}
    assert by_name[runpod.name]["later_image_wait_s"]["p50"] <= economics.PATIENCE_S
    assert by_name[economics.way("runpod", 5).name]["later_image_wait_s"]["p50"] > economics.PATIENCE_S
    [scaled] = [r for r in yaml.safe_load_all((ROOT / "deploy/kubernetes/keda.yaml").read_text())
                if r["kind"] == "ScaledObject"]
    spec = scaled["spec"]
    assert spec["cooldownPeriod"] == keda.idle_s
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] == keda.idle_s
    assert (spec["pollingInterval"], spec["maxReplicaCount"]) == (economics.KEDA_POLL_S, economics.MAX_WORKERS)
    for page, setting in (("README.md", r"min workers 0, idle timeout (\d+) s"),
                          ("docs/deployment.md", r"max as your budget allows; idle timeout (\d+) s")):
        assert [int(s) for s in re.findall(setting, (ROOT / page).read_text())] == [runpod.idle_s], page
