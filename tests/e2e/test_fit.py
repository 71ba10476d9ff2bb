"""End-to-end runs of the real entry point (`ctvlp fit`) on the phantom CT-RATE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from ctvlp.config.loader import available_experiments
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate


def _only_run(runs_dir: Path, experiment: str) -> Path:
    versions = sorted((runs_dir / experiment).glob("version_*"))
    assert len(versions) == 1, versions
    return versions[0]


@pytest.mark.parametrize("experiment", available_experiments())
def test_fast_dev_run_every_experiment(experiment: str, phantom_overrides: list[str], tmp_path: Path) -> None:
    code = main(
        [
            "fit",
            experiment,
            "--profile",
            "cpu_demo",
            *phantom_overrides,
            f"runs_dir={tmp_path}",
            "trainer.fast_dev_run=true",
        ]
    )
    assert code == 0
    assert (_only_run(tmp_path, experiment) / "config.yaml").exists()


def test_training_learns_retrieval_above_chance(trained_run: Path) -> None:
    """After the fixture's 400 steps the true report ranks well above chance on both held-out
    splits: R@5 over 1.5x its chance level, and the mean rank more than 3 null standard deviations
    better than a random ranking's (N + 1) / 2 (sd ~ sqrt(N / 12) for N volumes)."""
    results = json.loads((trained_run / "results.json").read_text())
    for split in ("val", "test"):
        for k in (1, 5, 10):
            assert f"{split}/retrieval/R@{k}" in results and f"{split}/retrieval/R@{k}_chance" in results
        assert results[f"{split}/retrieval/R@5"] > 1.5 * results[f"{split}/retrieval/R@5_chance"], results
        chance = results[f"{split}/retrieval/MnR_chance"]
        volumes = 2 * chance - 1
        assert results[f"{split}/retrieval/MnR"] < chance - 3 * math.sqrt(volumes / 12), results
    assert (trained_run / "results.md").read_text().startswith("| split | task |")


def test_run_directory_layout(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").exists()
    checkpoints = {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-step") for name in checkpoints), checkpoints
    results = json.loads((trained_run / "results.json").read_text())
    for split in ("val", "test"):  # evaluation.final_tasks: zero-shot beside retrieval
        for task in ("retrieval/R@5", "zeroshot_native/AUROC", "zeroshot_short/AUROC"):
            assert 0.0 <= results[f"{split}/{task}"] <= 1.0, sorted(results)


def test_tensorboard_has_scalars_hparams_and_previews(trained_run: Path) -> None:
    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/temperature",
        "train/lr",
        "val/retrieval/R@5",
        "val/retrieval/R@5_chance",
    ):
        assert tag in scalars, sorted(scalars)
    assert len(events.Scalars("train/loss")) >= 10
    lrs = [e.value for e in events.Scalars("train/lr")]
    configured_lr = OmegaConf.load(trained_run / "config.yaml").optim.lr
    assert max(lrs) == pytest.approx(configured_lr, rel=0.05)  # warm-up reaches the configured lr
    images = events.Tags()["images"]
    assert {"axial", "coronal", "sagittal"} <= {tag.rsplit("/", 1)[-1] for tag in images}, images
    assert (trained_run / "tensorboard" / "hparams.yaml").exists()


def test_fit_builds_a_missing_cache_in_prepare_data(tmp_path: Path) -> None:
    phantom_root = tmp_path / "phantom"  # its own small phantom: the build is the point, not the data
    write_phantom_ct_rate(phantom_root, n=16, seed=0, workers=2, progress=False)
    cache_dir = tmp_path / "fresh_cache"
    overrides = [f"data.root={phantom_root}", f"data.cache_dir={cache_dir}", "data.val_patients=3"]
    code = main(
        [
            "fit",
            "colipri_c",
            "--profile",
            "cpu_demo",
            *overrides,
            f"runs_dir={tmp_path}",
            "trainer.fast_dev_run=true",
        ]
    )
    assert code == 0
    assert (cache_dir / "ct_rate" / "6mm-paper" / "index.json").exists()
