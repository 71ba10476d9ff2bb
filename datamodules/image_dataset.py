"""Datasets over cache entries: the crop / augmentation / labels every sample shares, and the
image-only dataset (no report)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.batching import IMAGE_ONLY, VOLUME
from datamodules.cache import CacheEntry, read_crop, read_mask_crop
from datamodules.organ_classes import has_every_organ, organ_class_map, unknown_class_map
from datamodules.transforms import CACHE_HU_RANGE, IntensityAugmentation, as_size3, crop_start, hu_to_input


class Crop(NamedTuple):
    index: int
    entry: CacheEntry
    image: torch.Tensor  # (1, X, Y, Z) in [-1, 1]
    rng: np.random.Generator | None  # training: the sample's stream, continued by the caller
    organ_classes: torch.Tensor | None  # (X, Y, Z) uint8 with ``organ_masks``


class CroppedVolumeDataset(Dataset):
    """One sample per cache entry: a ``crop_size`` crop (an int: a cube; or (x, y, z) voxels), its
    labels, where it came from.

    Indexed with ``(index, epoch)`` (see ``TrainSampler``) when training: random crop and
    augmentation are then a pure function of ``(seed, epoch, index)``, so a resumed run sees the
    same data as an uninterrupted one. Indexed with a plain ``index`` for evaluation: centre crop,
    no augmentation. ``crop_field`` (x, y, z): the centred region each volume is padded (air) or
    cropped to first; training crops are drawn inside it, the evaluation crop is its centre (None:
    the whole volume). ``hu_window`` [lo, hi]: the HU range mapped to [-1, 1]
    (``transforms.hu_to_input``). ``organ_masks``: every sample also carries ``organ_classes``, the
    crop's organ class map (``datamodules/organ_classes.py``; all ``UNKNOWN_CLASS`` when the volume
    lacks a mask), cut from the same box; the augmentation is intensity-only, so it still matches.
    """

    kind = VOLUME

    def __init__(
        self,
        entries: list[CacheEntry],
        crop_size: int | Sequence[int],
        train: bool,
        augmentation: IntensityAugmentation | None = None,
        seed: int = 0,
        crop_field: Sequence[int] | None = None,
        hu_window: Sequence[float] = CACHE_HU_RANGE,
        organ_masks: bool = False,
    ) -> None:
        self.entries = entries
        self.organ_masks = organ_masks
        self.crop_size = crop_size
        self.size = as_size3(crop_size)
        self.crop_field = None if crop_field is None else as_size3(crop_field, "crop_field")
        if self.crop_field is not None and any(
            c > f for c, f in zip(self.size, self.crop_field, strict=True)
        ):
            raise ValueError(f"crop_size {list(self.size)} is larger than crop_field {list(self.crop_field)}")
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.train = train
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def _crop(self, key: int | tuple[int, int]) -> Crop:
        """The sample's crop; its ``rng`` (training only) continues the sample's stream."""
        index, epoch = key if isinstance(key, tuple) else (key, None)
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train and epoch is not None else None
        start = crop_start(entry.shape, self.size, self.crop_field, rng)
        image = hu_to_input(read_crop(entry, start, self.size), self.hu_window)
        if rng is not None and self.augmentation is not None:
            image = self.augmentation(image, rng)
        organ_classes = self._classes(entry, start) if self.organ_masks else None
        return Crop(index, entry, image, rng, organ_classes)

    def _classes(self, entry: CacheEntry, start: tuple[int, ...]) -> torch.Tensor:
        if not has_every_organ(entry.masks):
            return torch.from_numpy(unknown_class_map(self.size))
        return torch.from_numpy(organ_class_map(read_mask_crop(entry, start, self.size)))

    def _sample(self, crop: Crop) -> dict[str, Any]:
        entry = crop.entry
        labels = torch.tensor(entry.labels, dtype=torch.float32)
        organs = {} if crop.organ_classes is None else {"organ_classes": crop.organ_classes}
        return {
            **organs,
            "image": crop.image,
            "image_id": entry.id,
            "index": crop.index,
            "labels": labels,
            "label_mask": ~torch.isnan(labels),
            "source": entry.source,
            "kind": self.kind,
        }


class ImageOnlyVolumeDataset(CroppedVolumeDataset):
    """Volumes without a report (kind ``IMAGE_ONLY``): crop, augmentation, labels where known."""

    kind = IMAGE_ONLY

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self._sample(self._crop(key))
