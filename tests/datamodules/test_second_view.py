"""RadFound's cross-view term needs two crops of each volume (``second_view``): the second one is a
pure function of (seed, epoch, index) from its own stream, leaves the first view as it was, and is
fixed (not the centre crop) in evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.batching import SECOND_VIEW, stack_samples
from datamodules.cache import CacheEntry
from datamodules.image_dataset import ImageOnlyVolumeDataset
from datamodules.transforms import AUGMENTATION_LEVELS

SHAPE = (40, 36, 32)
CROP = (16, 16, 16)


def _entry(tmp_path: Path) -> CacheEntry:
    """A volume whose every voxel differs, so different crops differ."""
    volume = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16)
    file = tmp_path / "v_1.npy"
    np.save(file, volume)
    return CacheEntry("v_1", "p_1", "train", "ct_rate", file, SHAPE, [1.0], {}, [])


def _dataset(entry: CacheEntry, train: bool, second_view: bool) -> ImageOnlyVolumeDataset:
    augmentation = AUGMENTATION_LEVELS["low"] if train else None
    return ImageOnlyVolumeDataset([entry], CROP, train, augmentation, seed=3, second_view=second_view)


def test_training_views_are_a_pure_function_of_seed_epoch_index(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    dataset = _dataset(entry, True, True)
    sample, again = dataset[(0, 5)], dataset[(0, 5)]
    fresh = _dataset(entry, True, True)[(0, 5)]  # a resumed run
    for other in (again, fresh):
        assert torch.equal(sample["image"], other["image"])
        assert torch.equal(sample[SECOND_VIEW], other[SECOND_VIEW])
    assert sample[SECOND_VIEW].shape == sample["image"].shape == (1, *CROP)
    assert not torch.equal(sample["image"], sample[SECOND_VIEW])
    assert not torch.equal(sample[SECOND_VIEW], dataset[(0, 6)][SECOND_VIEW])
    # The first view is the sample of a dataset without the second one.
    assert torch.equal(sample["image"], _dataset(entry, True, False)[(0, 5)]["image"])
    assert SECOND_VIEW not in _dataset(entry, True, False)[(0, 5)]


def test_evaluation_second_view_is_fixed_and_not_the_centre(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    dataset = _dataset(entry, False, True)
    first, again = dataset[0], dataset[0]
    assert torch.equal(first[SECOND_VIEW], again[SECOND_VIEW])
    assert not torch.equal(first["image"], first[SECOND_VIEW])  # the centre crop and another one
    assert torch.equal(first["image"], _dataset(entry, False, False)[0]["image"])


def test_batches_stack_the_second_view(tmp_path: Path) -> None:
    dataset = _dataset(_entry(tmp_path), True, True)
    batch = stack_samples([dataset[(0, epoch)] for epoch in range(3)])
    assert batch[SECOND_VIEW].shape == (3, 1, *CROP)
