"""Organ bit fields -> the class map GreenRFM's coarse segmentation learns, and the crops of it the
datasets serve beside the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.cache import MASK_DTYPE, CacheEntry, mask_relpath, read_crop, volume_relpath
from datamodules.image_dataset import ImageOnlyVolumeDataset
from datamodules.organ_classes import UNKNOWN_CLASS, has_every_organ, organ_class_map
from datamodules.totalseg import ORGANS
from datamodules.transforms import crop_start, hu_to_input

BIT = {organ: 1 << i for i, organ in enumerate(ORGANS)}


def test_organ_class_map_values() -> None:
    bits = np.array(
        [
            0,  # outside the body
            BIT["body"],  # soft tissue
            BIT["body"] | BIT["lungs"],
            BIT["body"] | BIT["heart"],
            BIT["body"] | BIT["heart"] | BIT["aorta"],  # overlap: the later organ wins
            BIT["body"] | BIT["spine"],
        ],
        dtype=np.uint8,
    )
    assert ORGANS == ("body", "lungs", "heart", "aorta", "spine")
    assert organ_class_map(bits).tolist() == [0, 1, 2, 3, 4, 5]
    assert has_every_organ(list(ORGANS)) and not has_every_organ(["body", "lungs"])


def _entry(tmp_path: Path, name: str, masks: list[str]) -> CacheEntry:
    rng = np.random.default_rng(0)
    shape = (12, 10, 8)
    file = tmp_path / volume_relpath(name)
    file.parent.mkdir(parents=True, exist_ok=True)
    np.save(file, rng.integers(-1000, 1000, shape).astype(np.int16))
    entry = CacheEntry(name, name, "train", "ct_rate", file, shape, [1.0], masks=masks)
    if masks:
        bits = np.zeros(shape, dtype=MASK_DTYPE)
        bits[2:10, 2:8, 1:7] = BIT["body"]
        bits[3:6, 3:7, 2:6] |= BIT["lungs"]
        bits[7:9, 4:6, 3:5] |= BIT["heart"]
        (tmp_path / mask_relpath(name)).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / mask_relpath(name), bits)
    return entry


def test_dataset_serves_the_class_map_of_the_image_crop(tmp_path: Path) -> None:
    full = _entry(tmp_path, "full", list(ORGANS))
    partial = _entry(tmp_path, "partial", ["body", "lungs"])  # heart, aorta, spine unknown
    size = (8, 8, 6)
    data = ImageOnlyVolumeDataset([full, partial], size, train=True, seed=5, organ_masks=True)
    sample = data[(0, 3)]
    start = crop_start(full.shape, size, None, np.random.default_rng([5, 3, 0]))
    assert torch.equal(sample["image"], hu_to_input(read_crop(full, start, size)))
    bits = np.load(full.mask_file)
    expected = organ_class_map(bits)[tuple(slice(s, s + c) for s, c in zip(start, size, strict=True))]
    assert sample["organ_classes"].dtype == torch.uint8
    assert torch.equal(sample["organ_classes"], torch.from_numpy(expected))
    assert set(sample["organ_classes"].unique().tolist()) >= {0, 1}
    # a volume without every organ's mask has no target at all
    assert (data[(1, 3)]["organ_classes"] == UNKNOWN_CLASS).all()
    # without the flag, no key (the other recipes' batches are unchanged)
    assert "organ_classes" not in ImageOnlyVolumeDataset([full], size, train=False)[0]
