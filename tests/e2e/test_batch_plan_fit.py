"""`ctvlp fit` derives the per-device batch from the global batch and records what the run used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from ctvlp.cli import main

STEPS = 3


def test_fit_derives_the_per_device_batch_and_records_the_plan(
    phantom_overrides: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Global 8 with 2 accumulation steps on one CPU device: 4 per micro-batch, 2 micro-batches per
    optimiser step; config.yaml, the checkpoint's hparams and hparams.yaml hold the resolved plan."""
    arguments = [
        "fit", "colipri_c", "--profile", "cpu_demo", *phantom_overrides,
        f"runs_dir={tmp_path}",
        "data.global_batch_size=8",
        "trainer.accumulate_grad_batches=2",
        f"trainer.max_steps={STEPS}",
        f"trainer.checkpoint_every_n_steps={STEPS}",
        "trainer.val_check_interval=1000",
        "optim.warmup_steps=1",
        "data.crop_size=32",
        "data.num_workers=0",
        "model.text.max_length=32",
        "evaluation.final_splits=[]",
        "evaluation.preview_volumes=0",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(arguments) == 0
    (run,) = sorted((tmp_path / "colipri_c").glob("version_*"))

    resolved = {"batch_size": 4, "global_batch_size": 8}
    trainer_resolved = {"accumulate_grad_batches": 2, "devices": 1, "num_nodes": 1}
    config = OmegaConf.load(run / "config.yaml")
    assert {k: config.data[k] for k in resolved} == resolved
    assert {k: config.trainer[k] for k in trainer_resolved} == trainer_resolved

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hparams = checkpoint["hyper_parameters"]["config"]
    assert {k: hparams["data"][k] for k in resolved} == resolved
    assert {k: hparams["trainer"][k] for k in trainer_resolved} == trainer_resolved
    saved = yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text(encoding="utf-8"))["config"]
    assert {k: saved["data"][k] for k in resolved} == resolved

    # Each optimiser step drew two micro-batches from the stream.
    assert checkpoint["global_step"] == STEPS
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert progress == 2 * STEPS

    plan_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Batch: ")]
    assert plan_lines == [
        "Batch: global batch 8 = 4 per device x 1 device(s) x 1 node(s) x 2 accumulation step(s)"
    ]
    assert "each micro-batch contrasts 4 pairs" in caplog.text  # CLIP under accumulation: said once
