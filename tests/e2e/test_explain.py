"""End to end: `ctvlp explain` on an untrained GreenRFM-Lite checkpoint and a small phantom CT-RATE.

Nothing is trained: the checkpoint holds a freshly built module's weights (Grad-CAM of random weights
is meaningless, but the files, grids, affines and errors are what is checked). The crop is
non-cubic and the cache anisotropic, so an axis mix-up shows in a shape or an affine.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ctvlp.cli import main
from ctvlp.config.loader import load_experiment
from datamodules.cache import CacheIndex, cache_path, read_crop
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate
from datamodules.transforms import centre_crop_start
from lightning_modules.greenrfm import GreenRFMModule

SPACING = (6.0, 6.0, 8.0)
CROP = (48, 40, 32)
PROMPT = "There is pleural effusion."


def _save(path: Path, config: dict, state_dict: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "hyper_parameters": {"config": config}, "global_step": 0}, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A run directory with a GreenRFM-Lite checkpoint (cpu_demo profile) over a 40-scan phantom."""
    tmp = tmp_path_factory.mktemp("explain")
    root = tmp / "ct_rate"
    write_phantom_ct_rate(root, n=40, seed=0, workers=1, progress=False)
    overrides = [
        f"data.root={root}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.val_patients=6",
        "data.preprocess_workers=1",
        f"data.spacing=[{', '.join(map(str, SPACING))}]",
        f"data.crop_size=[{', '.join(map(str, CROP))}]",
        "data.crop_field=null",
        f"runs_dir={tmp / 'runs'}",
    ]
    config = OmegaConf.to_container(load_experiment("greenrfm_lite", "cpu_demo", overrides), resolve=True)
    module = GreenRFMModule(config)
    run = tmp / "runs" / "greenrfm_lite" / "version_0"
    _save(run / "checkpoints" / "last.ckpt", config, module.state_dict())
    return run, config


def test_explain_writes_overlaying_nifti_files_and_a_png(
    run: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, config = run
    assert main(["explain", "--ckpt", str(run_dir), "--volume", "valid_1_a_1", "--prompt", PROMPT]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"similarity -?\d", printed)
    out = run_dir / "explain"
    heat = nib.load(out / "valid_1_a_1_gradcam.nii.gz")
    image = nib.load(out / "valid_1_a_1_input.nii.gz")
    for path in ("valid_1_a_1_gradcam.nii.gz", "valid_1_a_1_input.nii.gz", "valid_1_a_1_gradcam.png"):
        assert str(out / path) in printed

    data = np.asarray(heat.dataobj)
    assert data.shape == CROP and data.dtype == np.float32
    assert data.min() >= 0 and data.max() <= 1
    index = CacheIndex.load(cache_path(Path(config["data"]["cache_dir"]), "ct_rate", list(SPACING), "paper"))
    entry = next(e for e in index.entries if e.id == "valid_1_a_1")
    start = centre_crop_start(entry.shape, CROP)
    np.testing.assert_array_equal(np.asarray(image.dataobj), read_crop(entry, start, CROP))
    expected = np.diag([*SPACING, 1.0])
    expected[:3, 3] = np.asarray(start) * np.asarray(SPACING)
    np.testing.assert_allclose(heat.affine, expected)
    np.testing.assert_allclose(image.affine, expected)
    assert nib.aff2axcodes(heat.affine) == ("R", "A", "S")
    assert (out / "valid_1_a_1_gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_names_a_few_ids_and_the_split_that_holds_the_volume(
    run: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = run
    args = ["explain", "--ckpt", str(run_dir), "--prompt", PROMPT, "--split", "test"]
    assert main([*args, "--volume", "train_10_a_1"]) == 2
    error = capsys.readouterr().err
    assert "valid_1_a_1" in error and "pass --split train" in error
    assert main([*args, "--volume", "no_such_volume"]) == 2
    assert "not in the 'test' split" in capsys.readouterr().err


def test_explain_refuses_a_module_without_grad_cam(
    run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused from the checkpoint's config alone, before any weight or data is loaded."""
    _, config = run
    ckpt = tmp_path / "mae.ckpt"
    model = {**config["model"], "image": {**config["model"]["image"], "arch": "primus"}}  # an MAE's tower
    _save(ckpt, {**config, "module": "mae", "name": "mae", "model": model}, {})
    assert main(["explain", "--ckpt", str(ckpt), "--volume", "valid_1_a_1", "--prompt", PROMPT]) == 2
    error = capsys.readouterr().err
    assert "'mae' module has no Grad-CAM" in error
    assert "greenrfm" in error.split("modules that have one:")[1]
