"""data.spatial_augmentation: small rotation / zoom / mirroring of training crops, drawn from the
per-sample stream (a pure function of seed, epoch and index), with organ masks kept aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from datamodules.cache import CacheEntry
from datamodules.image_dataset import ImageOnlyVolumeDataset
from datamodules.organ_classes import UNKNOWN_CLASS
from datamodules.totalseg import ORGANS
from datamodules.transforms import (
    SPATIAL_AUGMENTATION_LEVELS,
    SpatialAugmentation,
    SpatialParams,
    apply_spatial,
    spatial_read_box,
)

SHAPE = (40, 36, 32)
CROP = (24, 24, 16)
CUBE = (slice(14, 26), slice(12, 24), slice(10, 22))  # lies inside every 24 x 24 x 16 crop's reach
HEART = ORGANS.index("heart")
# Rotation and zoom at their strongest, so alignment is tested where it is hardest.
STRONG = SpatialAugmentation(rotation_deg=15.0, p_rotation=1.0, scale=0.15, p_scale=1.0, flip_axes=(0, 1, 2))


def _entry(tmp_path: Path, with_mask: bool = True) -> CacheEntry:
    """A volume of air with a bright (600 HU) cube and, as its organ mask, 'heart' on the cube and
    'body' everywhere."""
    volume = np.full(SHAPE, -1000, dtype=np.int16)
    volume[CUBE] = 600
    (tmp_path / "volumes").mkdir(exist_ok=True)
    file = tmp_path / "volumes" / "v_1.npy"
    np.save(file, volume)
    masks: list[str] = []
    if with_mask:
        bits = np.ones(SHAPE, dtype=np.uint8)  # body
        bits[CUBE] |= 1 << HEART
        (tmp_path / "masks").mkdir(exist_ok=True)
        np.save(tmp_path / "masks" / "v_1.npy", bits)
        masks = list(ORGANS)
    return CacheEntry("v_1", "p_1", "train", "ct_rate", file, SHAPE, [1.0], {}, masks)


def _dataset(entry: CacheEntry, spatial: SpatialAugmentation | None, **kwargs) -> ImageOnlyVolumeDataset:
    return ImageOnlyVolumeDataset(
        [entry], CROP, True, None, seed=3, organ_masks=True, spatial=spatial, **kwargs
    )


def test_same_key_same_output_and_epochs_differ(tmp_path: Path) -> None:
    dataset = _dataset(_entry(tmp_path), SPATIAL_AUGMENTATION_LEVELS["low"])
    first, again = dataset[(0, 5)], dataset[(0, 5)]
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["organ_classes"], again["organ_classes"])
    # A fresh dataset (a resumed run) draws the same sample for the same (seed, epoch, index).
    fresh = _dataset(_entry(tmp_path), SPATIAL_AUGMENTATION_LEVELS["low"])[(0, 5)]
    assert torch.equal(first["image"], fresh["image"])
    others = [dataset[(0, epoch)]["image"] for epoch in range(6, 10)]
    assert all(not torch.equal(first["image"], other) for other in others)


def test_params_are_drawn_from_the_sample_stream() -> None:
    level = SPATIAL_AUGMENTATION_LEVELS["medium"]
    assert level is not None
    draws = [level.draw(np.random.default_rng([0, epoch, 0])) for epoch in range(40)]
    assert draws[3] == level.draw(np.random.default_rng([0, 3, 0]))
    assert len(set(draws)) > 30
    assert all(abs(a) <= 15.0 for p in draws for a in p.angles_deg)
    assert all(0.85 <= p.zoom <= 1.15 for p in draws)
    assert any(p == SpatialParams(p.angles_deg, p.zoom, (False, False, False)) for p in draws)
    assert any(any(p.flips) for p in draws)


def test_none_is_the_plain_crop(tmp_path: Path) -> None:
    """Level none draws nothing: the image, the mask and the rest of the stream are as without it."""
    assert SPATIAL_AUGMENTATION_LEVELS["none"] is None
    entry = _entry(tmp_path)
    plain = ImageOnlyVolumeDataset([entry], CROP, True, None, seed=3, organ_masks=True)
    none = _dataset(entry, SPATIAL_AUGMENTATION_LEVELS["none"])
    for epoch in range(3):
        a, b = plain._crop((0, epoch)), none._crop((0, epoch))
        assert torch.equal(a.image, b.image) and torch.equal(a.organ_classes, b.organ_classes)
        assert a.rng.random() == b.rng.random()
    identity = torch.randn(1, *CROP)
    assert apply_spatial(identity, CROP, SpatialParams()) is identity


def test_identity_resampling_is_exact() -> None:
    """A drawn zoom of 1 with a zero rotation reads the crop itself; a tiny zoom is close to it."""
    volume = torch.randn(1, *CROP)
    start, size = spatial_read_box((0, 0, 0), CROP, SpatialParams())
    assert (start, size) == ((0, 0, 0), CROP)
    start, size = spatial_read_box((5, 5, 5), CROP, SpatialParams(zoom=1.0 + 1e-7))
    assert all(s == 4 for s in start) and size == tuple(c + 2 for c in CROP)
    padded = torch.nn.functional.pad(volume, (1, 1, 1, 1, 1, 1))
    out = apply_spatial(padded, CROP, SpatialParams(zoom=1.0 + 1e-7))
    assert torch.allclose(out, volume, atol=1e-4)


def test_mirroring_is_an_exact_flip() -> None:
    volume = torch.arange(24 * 24 * 16, dtype=torch.float32).reshape(1, *CROP)
    out = apply_spatial(volume, CROP, SpatialParams(flips=(True, False, True)))
    assert torch.equal(out, volume.flip([1, 3]))


@pytest.mark.parametrize("epoch", range(8))
def test_mask_stays_on_the_bright_cube(tmp_path: Path, epoch: int) -> None:
    dataset = _dataset(_entry(tmp_path), STRONG)
    sample = dataset[(0, epoch)]
    image, classes = sample["image"][0], sample["organ_classes"]
    assert image.shape == CROP and classes.shape == CROP and classes.dtype == torch.uint8
    heart = classes == HEART + 1
    bright = image > 0.3  # 600 HU is 0.6; air is -1
    assert heart.sum() > 100
    # Nearest vs trilinear sampling differ by at most a voxel at the cube's edge.
    agreement = (heart & bright).sum() / (heart | bright).sum()
    assert agreement > 0.8, float(agreement)
    # Only the cached classes (0: outside the volume), never a blend of bit fields.
    assert set(classes.unique().tolist()) <= {0, 1, HEART + 1}


def test_transform_moves_the_cube(tmp_path: Path) -> None:
    """Against the plain crop the strong transform moves the cube (it is not a no-op), yet mass is
    roughly kept: a rotation by at most 15 deg and a zoom by at most 15 %."""
    entry = _entry(tmp_path)
    plain = ImageOnlyVolumeDataset([entry], CROP, True, None, seed=3)[(0, 1)]["image"] > 0.3
    moved = _dataset(entry, STRONG)[(0, 1)]["image"] > 0.3
    assert not torch.equal(plain, moved)
    assert 0.4 < moved.sum() / plain.sum() < 2.5


def test_anisotropic_spacing_and_crop_field(tmp_path: Path) -> None:
    """A read past crop_field holds air; a rotation in an anisotropic cache keeps the mask aligned."""
    entry = _entry(tmp_path)
    dataset = _dataset(entry, STRONG, crop_field=(28, 28, 20), spacing=(1.5, 1.5, 3.0))
    for epoch in range(4):
        sample = dataset[(0, epoch)]
        heart = sample["organ_classes"] == HEART + 1
        bright = sample["image"][0] > 0.3
        assert (heart & bright).sum() / (heart | bright).sum() > 0.75
    volume = np.zeros((6, 6, 6), dtype=np.int16)
    out = dataset._outside_field_to_air(entry, volume, (4, 2, 4))
    field_start = ((40 - 28) // 2, (36 - 28) // 2, (32 - 20) // 2)
    assert field_start == (6, 4, 6)
    assert (out[2:, 2:, 2:] == 0).all()
    assert (out[:2] == -1000).all() and (out[:, :2] == -1000).all() and (out[:, :, :2] == -1000).all()


def test_entry_without_masks_gets_unknown_classes(tmp_path: Path) -> None:
    sample = _dataset(_entry(tmp_path, with_mask=False), STRONG)[(0, 0)]
    assert (sample["organ_classes"] == UNKNOWN_CLASS).all()


def test_evaluation_is_never_augmented(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    plain = ImageOnlyVolumeDataset([entry], CROP, False, None)[0]["image"]
    assert torch.equal(_dataset(entry, STRONG)[0]["image"], plain)


def test_config_rejects_unknown_levels() -> None:
    cfg = load_experiment("colipri_c", profile="cpu_demo")
    assert cfg.data.spatial_augmentation == "none"  # the CPU demo trains without it
    root = ["data.root=/data/CT-RATE/dataset"]
    assert load_experiment("colipri_c", overrides=root).data.spatial_augmentation == "low"
    assert load_experiment("greenrfm", overrides=root).data.spatial_augmentation == "none"
    with pytest.raises(ConfigError, match=r"data\.spatial_augmentation.*Allowed: none, low, medium"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["data.spatial_augmentation=high"])
