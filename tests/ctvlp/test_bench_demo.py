"""make bench-demo's cases are valid overrides of the demo's config, and its table puts each case's
ratios against "before" (whole fits have no s/step)."""

from __future__ import annotations

import pytest

from ctvlp.bench.demo import CASES, Timing, table
from ctvlp.config.loader import load_experiment


@pytest.mark.parametrize("case", list(CASES))
def test_each_case_loads_as_the_demo_config(case: str) -> None:
    cfg = load_experiment("colipri_crm", "cpu_demo", ["data.root=unused", *CASES[case]])
    before = case == "before"
    assert cfg.trainer.cpu_keep_freed_memory is not before
    assert (cfg.model.text.frozen_cache_mb > 0) is (case in ("text cache", "after"))
    assert (cfg.data.text.shuffles_per_report == 2) is (case == "after")


def test_table_ratios_against_before() -> None:
    steps = table(
        [Timing("before", 100, 0.8, 100.0, 180.0, None), Timing("after", 100, 0.4, 60.0, 90.0, 0.75)]
    )
    assert "| after | 0.400 | 60.0 | 90.0 | 75.0% | 2.00x | 1.67x | 2.00x |" in steps
    whole = table(
        [Timing("before", None, None, 600.0, 900.0, None), Timing("after", None, None, 300.0, 600.0, None)]
    )
    assert "| after | — | 300.0 | 600.0 | — | — | 2.00x | 1.50x |" in whole
