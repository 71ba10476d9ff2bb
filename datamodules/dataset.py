"""The paired image–report dataset over cache entries: crop, augment, pick the report text,
structure the Findings into the eight CapPa sections."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.cache import CacheEntry, read_crop
from datamodules.report_sections import SECTION_NAMES, report_sections
from datamodules.text import ReportTransform
from datamodules.transforms import IntensityAugmentation, centre_crop_start, hu_to_input, random_crop_start


class PairedVolumeDataset(Dataset):
    """One sample per cache entry.

    Indexed with ``(index, epoch)`` (see ``TrainSampler``) when training: random crop,
    augmentation and text transforms are then a pure function of ``(seed, epoch, index)``, so a
    resumed run sees the same data as an uninterrupted one. Indexed with a plain ``index`` for
    evaluation: centre crop, no augmentation, the report as written.

    ``sections`` is the Findings as the eight CapPa sections (``structured`` sidecar entry, else
    the keyword rules), a dict whose key order is the order the decoder writes them in: shuffled
    per training sample (from the same per-sample RNG), canonical for evaluation.
    """

    def __init__(
        self,
        entries: list[CacheEntry],
        crop_size: int,
        report_transform: ReportTransform,
        train: bool,
        augmentation: IntensityAugmentation | None = None,
        seed: int = 0,
        structured: Mapping[str, dict[str, list[str]]] | None = None,
    ) -> None:
        self.entries = entries
        self.crop_size = crop_size
        self.report_transform = report_transform
        self.train = train
        self.augmentation = augmentation
        self.seed = seed
        self.structured = structured

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
        text_rng = random.Random(int(rng.integers(2**63))) if rng is not None else None
        # Drawn after the earlier draws, so adding it left crops, augmentation and text unchanged.
        section_rng = random.Random(int(rng.integers(2**63))) if rng is not None else None
        labels = torch.tensor(entry.labels, dtype=torch.float32)
        return {
            "image": image,
            "image_id": entry.id,
            "index": index,
            "report": self.report_transform(entry.id, entry.sections, text_rng),
            "sections": self._sections(entry, section_rng),
            "labels": labels,
            "label_mask": ~torch.isnan(labels),
            "source": entry.source,
            "kind": "paired",
        }

    def _sections(self, entry: CacheEntry, rng: random.Random | None) -> dict[str, list[str]]:
        sections = report_sections(entry.id, entry.sections.get("findings") or "", self.structured)
        order = list(SECTION_NAMES)
        if rng is not None:
            rng.shuffle(order)
        return {name: sections[name] for name in order}
