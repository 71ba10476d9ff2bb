"""End to end: `ctvlp eval --tasks dense_zeroshot` (MaskCLIP maps of the findings against the phantom's
finding masks) on the trained cpu_demo COLIPRI-C run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from ctvlp.commands.eval_dense import MAPS_DIR, dense_encoder, label_slug, split_dense_task
from ctvlp.config.errors import ConfigError
from ctvlp.config.evaluation_tasks import parse_tasks
from ctvlp.config.loader import checkpoint_config
from ctvlp.run_dir import read_checkpoint, resolve_checkpoint
from datamodules.datamodule import resolve_cache_root
from datamodules.finding_mask_layout import FINDING_LABEL_VALUES, FINDING_MASKS_DIR
from lightning_modules.colipri import ColipriModule
from lightning_modules.mae import MAEModule

FINDING_LABEL_VALUES_BY_VALUE = {value: label for label, value in FINDING_LABEL_VALUES.items()}
TINY = {"data": {"crop_size": 32}, "model": {"image": {"size": "tiny"}, "text": {"max_length": 64}}}


@pytest.fixture(scope="module")
def dense_evaluated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dense_eval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on 2 shared cores: threads only add waiting
    arguments = ["eval", "--ckpt", str(trained_run), "--tasks", "dense_zeroshot", "--splits", "test"]
    code = main([*arguments, "--out", str(out), "--no-progress", "--write-maps"])
    torch.set_num_threads(threads)
    assert code == 0
    return out


def test_dense_zeroshot_writes_metrics_maps_and_overlays(dense_evaluated: Path, trained_run: Path) -> None:
    out = dense_evaluated
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    per_label = {k: v for k, v in results.items() if k.startswith("test/dense_zeroshot.")}
    assert per_label and not any(k.startswith("val/") for k in results)  # val only picks thresholds
    aurocs = [v for k, v in per_label.items() if k.endswith("/AUROC") and not math.isnan(v)]
    assert aurocs and all(0.0 <= v <= 1.0 for v in aurocs)
    assert results["test/dense_zeroshot/AUROC"] == pytest.approx(float(np.mean(aurocs)))
    assert 0.0 <= results["test/dense_zeroshot/Dice"] <= 1.0
    print(f"\ntest/dense_zeroshot/AUROC = {results['test/dense_zeroshot/AUROC']:.4f}, "
          f"Dice = {results['test/dense_zeroshot/Dice']:.4f}; per finding: {per_label}")  # fmt: skip
    details = json.loads((out / "dense_zeroshot.json").read_text(encoding="utf-8"))
    assert details["volumes_per_finding"]["test"] and not details["skipped"]
    assert "| test | dense_zeroshot |" in (out / "results.md").read_text(encoding="utf-8")

    # Maps: probabilities on the evaluation crop, each beside the crop's finding mask, same affine.
    cfg = checkpoint_config(read_checkpoint(resolve_checkpoint(trained_run)).config, [])
    folder = out / MAPS_DIR / "test"
    written = sorted(folder.glob("*_findings.nii.gz"))
    assert written
    for mask_path in written[:3]:
        volume_id = mask_path.name[: -len("_findings.nii.gz")]
        mask = nib.load(mask_path)
        shown = [FINDING_LABEL_VALUES_BY_VALUE[int(v)] for v in np.unique(np.asarray(mask.dataobj)) if v]
        for label in shown:
            heat = nib.load(folder / f"{volume_id}_{label_slug(label)}.nii.gz")
            np.testing.assert_array_equal(mask.affine, heat.affine)
            data = np.asarray(heat.dataobj)
            assert data.shape == (int(cfg.data.crop_size),) * 3 == mask.shape
            assert 0.0 <= data.min() <= data.max() <= 1.0

    # TensorBoard: CT slice | mask | map images.
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    images = [t for t in events.Tags()["images"] if t.startswith("dense_zeroshot/test/")]
    assert images
    image = events.Images(images[0])[0]
    assert image.width == 3 * image.height  # three square axial panels side by side

    # The resampled masks are cached under the cache root for the next evaluation.
    cached = resolve_cache_root(cfg.data) / FINDING_MASKS_DIR
    assert all((cached / f"{p.name[: -len('_findings.nii.gz')]}.npy").is_file() for p in written)


def test_modules_without_attention_pooling_or_text_get_a_clear_error() -> None:
    model = {**TINY["model"], "image": {"size": "tiny", "pooler": "mean"}}
    mean_pooled = ColipriModule.from_sections(data=TINY["data"], model=model)
    with pytest.raises(ConfigError, match="attention pooler.*MeanPool1D"):
        dense_encoder(mean_pooled, "colipri")
    image_only = MAEModule.from_sections(**TINY, module="mae", objectives={"mae": {"decoder_depth": 1}})
    with pytest.raises(ConfigError, match="no text encoder"):
        dense_encoder(image_only, "mae")
    assert dense_encoder(ColipriModule.from_sections(**TINY), "colipri") is not None


def test_dense_zeroshot_is_a_ctvlp_eval_task_only() -> None:
    assert split_dense_task("probe, dense_zeroshot") == (True, "probe")
    assert split_dense_task("dense_zeroshot") == (True, None)
    assert split_dense_task("retrieval") == (False, "retrieval")
    with pytest.raises(ValueError, match="dense_zeroshot runs in `ctvlp eval --tasks dense_zeroshot` only"):
        parse_tasks(["retrieval", "dense_zeroshot"])  # e.g. in evaluation.callback_tasks
