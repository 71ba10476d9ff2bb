"""The image-only dataset over cache entries (no report): crop, augment, labels where known."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.cache import CacheEntry, read_crop
from datamodules.transforms import IntensityAugmentation, centre_crop_start, hu_to_input, random_crop_start


class ImageOnlyVolumeDataset(Dataset):
    """Like :class:`datamodules.dataset.PairedVolumeDataset`, without text: ``kind="image_only"``.

    Indexed with ``(index, epoch)`` for training (random crop and augmentation, a pure function of
    ``(seed, epoch, index)``) or a plain ``index`` for evaluation (centre crop).
    """

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

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
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
        labels = torch.tensor(entry.labels, dtype=torch.float32)
        return {
            "image": image,
            "image_id": entry.id,
            "index": index,
            "labels": labels,
            "label_mask": ~torch.isnan(labels),
            "source": entry.source,
            "kind": "image_only",
        }


def collate_image_only(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, ints become a long tensor, everything else stays a list."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch
