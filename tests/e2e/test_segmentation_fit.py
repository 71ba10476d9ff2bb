"""Segmentation fine-tuning end to end through the real CLI: `ctvlp fit seg_finetune --profile
cpu_demo` on a phantom MSD liver dataset written here (NIfTI, dataset.json), cached, trained on
foreground-oversampled patches and scored by sliding-window Dice on the held-out fold. The learned
Dice is compared with trivial predictions scored the same way on the same test volumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from datamodules.segmentation_datamodule import SegmentationDataModule
from lightning_modules.segmentation import per_class_dice

# 6 mm (volumes ~65^3) and 32^3 patches: the liver spans many voxels, a step and a sliding-window
# pass are cheap on two CPU cores.
FAST = [
    "data.spacing=6.0",
    "data.crop_size=32",
    "data.num_workers=0",
    "optim.warmup_steps=5",
    "trainer.val_check_interval=40",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=40",
    "segmentation.sw_batch_size=8",
    "evaluation.final_splits=[test]",
]


def _fit(root: Path, runs_dir: Path, overrides: list[str]) -> Path:
    arguments = ["fit", "seg_finetune", "--profile", "cpu_demo", f"data.root={root}",
                 f"data.cache_dir={runs_dir / 'cache'}", f"runs_dir={runs_dir}", *FAST, *overrides]  # fmt: skip
    assert main(arguments) == 0
    (run,) = sorted((runs_dir / "seg_finetune").glob("version_*"))
    return run


def _trivial_dice(run: Path, fill: int) -> torch.Tensor:
    """(K-1,) mean Dice per foreground class on the run's test volumes of a prediction that is
    ``fill`` everywhere, scored as the module scores its own."""
    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = SegmentationDataModule(cfg.data, int(cfg.seed))
    datamodule.setup()
    rows = []
    for sample in datamodule.datasets["test"]:
        label = sample["label"][None]
        rows.append(per_class_dice(torch.full_like(label, fill), label, len(datamodule.label_names)))
    return torch.nanmean(torch.cat(rows), dim=0).nan_to_num(0.0)


def test_fit_learns_the_liver_beyond_trivial_predictions(msd_liver_root: Path, tmp_path: Path) -> None:
    run = _fit(msd_liver_root, tmp_path, ["trainer.max_steps=40"])
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.05  # Dice + CE falls
    oversampled = [e.value for e in events.Scalars("train/foreground_centred")]
    assert 0.15 < sum(oversampled) / len(oversampled) < 0.55  # a third of the patches (nnU-Net: 0.33)
    liver = results["test/dice/liver"]
    assert results["test/dice/mean"] == pytest.approx((liver + results["test/dice/lesion"]) / 2, abs=1e-6)
    background, everywhere = _trivial_dice(run, fill=0), _trivial_dice(run, fill=1)
    assert background[0] == 0.0  # all background finds no liver
    assert liver > background[0] and liver > everywhere[0] + 0.05, (liver, everywhere[0])
    # image | label | prediction of a validation volume
    assert any(tag.startswith("segmentation/0_liver_") for tag in events.Tags()["images"])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stored = checkpoint["hyper_parameters"]["config"]["segmentation"]["labels"]
    assert stored == ["background", "liver", "lesion"]  # from dataset.json: the output channels' names
