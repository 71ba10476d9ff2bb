"""End to end: the encoders of the image-only objectives (MAE, CapPa), which have no text
embeddings, are probed by `ctvlp eval` and periodically during pretraining; asking them for
retrieval or zero-shot is an error that says so."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main

SHORT_FIT = [
    "trainer.max_steps=2",
    "optim.warmup_steps=1",
    "trainer.val_check_interval=2",
    "evaluation.final_splits=[]",
]
LIGHT_EVAL = ["--no-progress", "evaluation.probe_steps=20", "evaluation.bootstrap_resamples=10"]


@pytest.fixture(scope="module")
def short_run(
    phantom_overrides: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """A two-step cpu_demo run of an experiment, trained once per module."""
    runs: dict[str, Path] = {}

    def run(experiment: str) -> Path:
        if experiment not in runs:
            base = tmp_path_factory.mktemp(f"{experiment}_runs")
            arguments = ["fit", experiment, "--profile", "cpu_demo", f"runs_dir={base}", *phantom_overrides]
            assert main([*arguments, *SHORT_FIT]) == 0
            (runs[experiment],) = sorted((base / experiment).glob("version_*"))
        return runs[experiment]

    return run


def test_eval_defaults_to_probes_for_a_module_without_text(
    short_run: Callable[[str], Path], tmp_path: Path
) -> None:
    assert main(["eval", "--ckpt", str(short_run("mae")), "--out", str(tmp_path), *LIGHT_EVAL]) == 0
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    tasks = {key.split("/")[1] for key in results}
    assert tasks == {"probe"}, sorted(results)
    for split in ("val", "test"):
        assert 0.0 <= results[f"{split}/probe/AUROC"] <= 1.0
    selection = json.loads((tmp_path / "probe_selection.json").read_text(encoding="utf-8"))
    assert len(selection["val_AUPRC"]) == 20 and selection["selected"] in selection["val_AUPRC"]


@pytest.mark.parametrize("module", ["mae", "cappa"])
def test_text_tasks_on_a_module_without_text_are_a_clear_error(
    module: str, short_run: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image_only_run = short_run(module)
    code = main(["eval", "--ckpt", str(image_only_run), "--out", str(tmp_path), "--tasks", "retrieval,probe"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"'{module}' module has no text encoder" in err and "--tasks probe" in err
    assert not (tmp_path / "results.json").exists()

    code = main(["export-colipri", "--ckpt", str(image_only_run), "--out", str(tmp_path / "x.safetensors")])
    assert code == 2
    assert "only COLIPRI (module colipri) checkpoints can be exported" in capsys.readouterr().err


@pytest.mark.parametrize("experiment", ["mae", "cappa"])
def test_pretraining_without_text_logs_the_probe_grid_periodically(
    experiment: str, phantom_overrides: list[str], tmp_path: Path
) -> None:
    periodic = ["evaluation.every_n_steps=2", "evaluation.probe_steps=5", "trainer.max_steps=4"]
    arguments = ["fit", experiment, "--profile", "cpu_demo", f"runs_dir={tmp_path}", *phantom_overrides]
    assert main([*arguments, *SHORT_FIT, *periodic]) == 0
    (run,) = sorted((tmp_path / experiment).glob("version_*"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("val/probe/AUROC")] == [2, 4]
    assert not any("retrieval" in tag or "zeroshot" in tag for tag in tags), tags


def test_text_tasks_in_the_periodic_evaluation_of_mae_are_a_config_error(
    phantom_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["fit", "mae", "--profile", "cpu_demo", f"runs_dir={tmp_path}", *phantom_overrides]
    code = main([*arguments, *SHORT_FIT, "evaluation.callback_tasks=[retrieval,probe]"])
    assert code == 2
    assert "evaluation.callback_tasks cannot include retrieval" in capsys.readouterr().err
