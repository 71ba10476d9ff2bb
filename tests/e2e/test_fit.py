"""End-to-end runs of the real entry point (`ctvlp fit`) on the phantom CT-RATE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from ctvlp.config.loader import available_experiments, load_experiment
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate


def _only_run(runs_dir: Path, experiment: str) -> Path:
    versions = sorted((runs_dir / experiment).glob("version_*"))
    assert len(versions) == 1, versions
    return versions[0]


@pytest.mark.parametrize("experiment", available_experiments())
def test_fast_dev_run_every_experiment(
    experiment: str, phantom_overrides: list[str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    overrides = phantom_overrides
    if experiment.startswith("reportgen_"):  # a random frozen encoder and the session's tiny LM
        lm = request.getfixturevalue("tiny_lm")
        overrides = [*overrides, "reportgen.encoder_ckpt=null", f"reportgen.lm.name_or_path={lm}"]
    data = load_experiment(experiment, "cpu_demo", overrides).data
    source = data.source
    if any(item.name == "inspect" for item in data.sources or []):  # CT-RATE + the session's INSPECT
        overrides = [*overrides, f"data.inspect_root={request.getfixturevalue('phantom_inspect_root')}"]
    if source == "msd":  # segmentation: the session's phantom liver at 6 mm (volumes ~65^3), 32^3 patches
        msd_root = request.getfixturevalue("msd_liver_root")
        overrides = [f"data.root={msd_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.spacing=6.0",
                     "data.crop_size=32"]  # fmt: skip
    if source == "merlin":
        merlin_root = request.getfixturevalue("merlin_root")
        # the 10-scan Merlin phantom has 6 training volumes: smaller batches than cpu_demo's 8
        overrides = [f"data.root={merlin_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=2"]
    code = main(
        [
            "fit",
            experiment,
            "--profile",
            "cpu_demo",
            *overrides,
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
    results = json.loads((trained_run / "results.json").read_text(encoding="utf-8"))
    for split in ("val", "test"):
        for k in (1, 5, 10):
            assert f"{split}/retrieval/R@{k}" in results and f"{split}/retrieval/R@{k}_chance" in results
        assert results[f"{split}/retrieval/R@5"] > 1.5 * results[f"{split}/retrieval/R@5_chance"], results
        chance = results[f"{split}/retrieval/MnR_chance"]
        volumes = 2 * chance - 1
        assert results[f"{split}/retrieval/MnR"] < chance - 3 * math.sqrt(volumes / 12), results
    assert (trained_run / "results.md").read_text(encoding="utf-8").startswith("| split | task |")


def test_run_directory_layout(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").exists()
    checkpoints = {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-step") for name in checkpoints), checkpoints
    results = json.loads((trained_run / "results.json").read_text(encoding="utf-8"))
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


def _short_fit(tmp_path: Path, phantom_overrides: list[str], *overrides: str) -> int:
    return main(
        [
            "fit",
            "colipri_c",
            "--profile",
            "cpu_demo",
            *phantom_overrides,
            f"runs_dir={tmp_path}",
            "trainer.max_steps=4",
            "optim.warmup_steps=1",
            "trainer.val_check_interval=2",
            "trainer.checkpoint_every_n_steps=2",
            "evaluation.final_splits=[]",
            *overrides,
        ]
    )


def test_best_checkpoint_follows_the_configured_metric_and_mode(
    phantom_overrides: list[str], tmp_path: Path
) -> None:
    assert _short_fit(tmp_path, phantom_overrides, "trainer.best_metric=val/retrieval/MnR") == 0
    run = _only_run(tmp_path, "colipri_c")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    ranks = [e.value for e in sorted(events.Scalars("val/retrieval/MnR"), key=lambda e: e.step)]
    assert len(ranks) == 2, ranks  # the validations after steps 2 and 4
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = [k for k, v in checkpoint["callbacks"].items() if v.get("monitor") == "val/retrieval/MnR"]
    assert len(keys) == 1 and "'mode': 'min'" in keys[0]  # a rank: lower is better, from the name
    (best,) = (run / "checkpoints").glob("best-step*.ckpt")
    best_step = int(best.stem.removeprefix("best-step"))
    assert ranks[best_step // 2 - 1] == min(ranks), (best.name, ranks)


def test_a_misspelt_selection_metric_stops_at_the_first_validation_with_the_closest_name(
    phantom_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _short_fit(tmp_path, phantom_overrides, "trainer.best_metric=val/retrieval/R@50") == 2
    error = capsys.readouterr().err
    assert "trainer.best_metric='val/retrieval/R@50' is not a metric the 'colipri' module logs" in error
    assert "Did you mean 'val/retrieval/R@5'?" in error and "val/retrieval/MnR" in error
    checkpoints = {p.name for p in (_only_run(tmp_path, "colipri_c") / "checkpoints").iterdir()}
    assert checkpoints <= {"last.ckpt", "step=2.ckpt"} and not any(c.startswith("best") for c in checkpoints)
