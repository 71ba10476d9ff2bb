"""Datasets over cache entries: the crop / augmentation / labels every sample shares, and the
image-only dataset (no report)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.batching import IMAGE_ONLY, VOLUME
from datamodules.cache import CacheEntry, read_crop
from datamodules.transforms import IntensityAugmentation, centre_crop_start, hu_to_input, random_crop_start


class CroppedVolumeDataset(Dataset):
    """One sample per cache entry: a ``crop_size``³ crop, its labels, where it came from.

    Indexed with ``(index, epoch)`` (see ``TrainSampler``) when training: random crop and
    augmentation are then a pure function of ``(seed, epoch, index)``, so a resumed run sees the
    same data as an uninterrupted one. Indexed with a plain ``index`` for evaluation: centre crop,
    no augmentation.
    """

    kind = VOLUME

    def __init__(
        self,
        entries: list[CacheEntry],
        crop_size: int,
        train: bool,
        augmentation: IntensityAugmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.entries = entries
        self.crop_size = crop_size
        self.train = train
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def _crop(
        self, key: int | tuple[int, int]
    ) -> tuple[int, CacheEntry, torch.Tensor, np.random.Generator | None]:
        """``(index, entry, image, rng)``; ``rng`` (training only) continues the sample's stream."""
        index, epoch = key if isinstance(key, tuple) else (key, None)
        entry = self.entries[index]
        size = (self.crop_size,) * 3
        if self.train and epoch is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            start = random_crop_start(entry.shape, self.crop_size, rng)
        else:
            rng = None
            start = centre_crop_start(entry.shape, self.crop_size)
        image = hu_to_input(read_crop(entry, start, size))
        if rng is not None and self.augmentation is not None:
            image = self.augmentation(image, rng)
        return index, entry, image, rng

    def _sample(self, index: int, entry: CacheEntry, image: torch.Tensor) -> dict[str, Any]:
        labels = torch.tensor(entry.labels, dtype=torch.float32)
        return {
            "image": image,
            "image_id": entry.id,
            "index": index,
            "labels": labels,
            "label_mask": ~torch.isnan(labels),
            "source": entry.source,
            "kind": self.kind,
        }


class ImageOnlyVolumeDataset(CroppedVolumeDataset):
    """Volumes without a report (kind ``IMAGE_ONLY``): crop, augmentation, labels where known."""

    kind = IMAGE_ONLY

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, entry, image, _ = self._crop(key)
        return self._sample(index, entry, image)
