"""README's cost table is bench/cost.py's output from the measured GPU figures, not a copy that can drift."""

from bench import cost
from testkit.processes import ROOT


def test_readme_carries_the_table_bench_cost_computes():
    assert cost.table() in (ROOT / "README.md").read_text()


def test_the_table_is_computed_from_the_measured_figures():
    image_s, cold_s = cost.measured().values()
    worst = cost.rows()[1][2]
    assert worst == cost.IMAGES_PER_MONTH * (cold_s + image_s + cost.IDLE_S)
    assert cost.rows()[0][2] > 100 * worst  # always on costs two orders of magnitude more for this traffic
