"""`ctvlp compare` on the phantom: an existing run, an encoder trained by the compare, and the random
baseline that the compare adds, scored by retrieval and the probe grid under one protocol; the
table, the JSON, the plots and the HParams exist, and a re-run recomputes nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main

SHARED = [
    "data.num_workers=0",
    "evaluation.probe_steps=40",
    "evaluation.bootstrap_resamples=20",
    "evaluation.preview_volumes=0",
]


def _spec(path: Path, trained_run: Path, phantom_overrides: list[str]) -> Path:
    spec = {
        "profile": "cpu_demo",
        "overrides": [*phantom_overrides, *SHARED],
        "encoders": [
            {"name": "fixture_run", "run": str(trained_run)},
            {
                "name": "short",
                "experiment": "colipri_c",
                "overrides": ["trainer.max_steps=6", "optim.warmup_steps=1", "trainer.val_check_interval=6"],
            },
        ],
        "tasks": ["retrieval", "probe"],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def compared(
    tmp_path_factory: pytest.TempPathFactory, trained_run: Path, phantom_overrides: list[str]
) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    spec = _spec(folder / "two.yaml", trained_run, phantom_overrides)
    assert main(["compare", str(spec), "--runs-dir", str(folder / "runs"), "--device", "cpu"]) == 0
    return folder


def test_compare_writes_table_json_plots_and_baseline(compared: Path) -> None:
    out = compared / "runs" / "compare" / "two"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["encoders"]) == ["fixture_run", "short", "random_colipri_c"]
    baseline = results["encoders"]["random_colipri_c"]
    assert baseline["baseline"] and baseline["source"] == "random init"
    for name, row in results["encoders"].items():
        for task in ("retrieval", "probe"):
            assert "value" in row["tasks"][task], (name, task, row["tasks"][task])
    # The probe grid bootstraps its CI; the table shows it and bolds one best value per column.
    probe = results["encoders"]["fixture_run"]["tasks"]["probe"]
    assert probe["ci_low"] <= probe["value"] <= probe["ci_high"]
    table = (out / "results.md").read_text(encoding="utf-8").splitlines()
    assert [line.split("|")[1].strip() for line in table[2:5]] == ["fixture_run", "short", "random_colipri_c"]
    assert sum(line.count("**") // 2 for line in table[2:5]) >= 2
    # The trained row carries its training cost; the existing run and the baseline carry none.
    assert results["encoders"]["short"]["cost"]["cpu_h"] > 0
    assert results["encoders"]["short"]["cost"]["gflops_per_sample"] > 0
    assert results["encoders"]["fixture_run"]["cost"]["cpu_h"] is None
    # Training FLOPs come from the checkpoint (steps x batch x FLOPs per sample): 400 steps against 6.
    assert (
        results["encoders"]["fixture_run"]["cost"]["train_flops"]
        > 50 * results["encoders"]["short"]["cost"]["train_flops"]
    )
    # Learning: the 400-step fixture run retrieves better than the untrained encoder on the test split.
    trained = results["encoders"]["fixture_run"]["tasks"]["retrieval"]["value"]
    assert trained > baseline["tasks"]["retrieval"]["value"]
    for name in ("retrieval.png", "probe.png", "quality_vs_cost.png"):
        assert (out / "plots" / name).stat().st_size > 5_000
    assert "| label |" in (out / "per_label.md").read_text(encoding="utf-8")
    events = EventAccumulator(str(out / "tensorboard" / "short"))
    events.Reload()
    assert "compare/retrieval" in events.Tags()["scalars"]


def test_compare_rerun_recomputes_nothing(
    compared: Path, trained_run: Path, phantom_overrides: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = compared / "runs" / "compare" / "two"
    jobs = sorted(out.glob("*/*/job.json"))
    assert len(jobs) == 4  # one training, three evaluations
    before = {path: path.stat().st_mtime_ns for path in jobs}
    spec = _spec(compared / "two.yaml", trained_run, phantom_overrides)
    with caplog.at_level(logging.INFO):
        assert main(["compare", str(spec), "--runs-dir", str(compared / "runs"), "--device", "cpu"]) == 0
    assert {path: path.stat().st_mtime_ns for path in jobs} == before
    assert caplog.text.count("reused (finished earlier)") == 4
