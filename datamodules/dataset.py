"""The paired image–report dataset over cache entries: crop, augment, pick the report text,
structure the Findings into the eight CapPa sections."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from datamodules.batching import PAIRED
from datamodules.cache import CacheEntry
from datamodules.image_dataset import CroppedVolumeDataset
from datamodules.report_sections import SECTION_NAMES, report_sections
from datamodules.text import ReportTransform
from datamodules.transforms import CACHE_HU_RANGE, IntensityAugmentation, SpatialAugmentation


class PairedVolumeDataset(CroppedVolumeDataset):
    """Volumes with their report (kind ``PAIRED``); cropping and indexing as in
    :class:`CroppedVolumeDataset`, plus text transforms drawn from the same per-sample RNG (the
    report as written for evaluation).

    ``sections`` is the Findings as the eight CapPa sections (``structured`` sidecar entry, else
    the keyword rules), a dict whose key order is the order the decoder writes them in: shuffled
    per training sample (from the same per-sample RNG), canonical for evaluation.
    """

    kind = PAIRED

    def __init__(
        self,
        entries: list[CacheEntry],
        crop_size: int | Sequence[int],
        report_transform: ReportTransform,
        train: bool,
        augmentation: IntensityAugmentation | None = None,
        seed: int = 0,
        structured: Mapping[str, dict[str, list[str]]] | None = None,
        crop_field: Sequence[int] | None = None,
        hu_window: Sequence[float] = CACHE_HU_RANGE,
        organ_masks: bool = False,
        spatial: SpatialAugmentation | None = None,
        spacing: float | Sequence[float] = 1.0,
        second_view: bool = False,
    ) -> None:
        super().__init__(
            entries,
            crop_size,
            train,
            augmentation,
            seed,
            crop_field,
            hu_window,
            organ_masks,
            spatial,
            spacing,
            second_view,
        )
        self.report_transform = report_transform
        self.structured = structured

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        crop = self._crop(key)
        entry, rng = crop.entry, crop.rng
        text_rng = random.Random(int(rng.integers(2**63))) if rng is not None else None
        # Drawn after the earlier draws, so adding it left crops, augmentation and text unchanged.
        section_rng = random.Random(int(rng.integers(2**63))) if rng is not None else None
        return {
            **self._sample(crop, key),
            "report": self.report_transform(entry.id, entry.sections, text_rng),
            "sections": self._sections(entry, section_rng),
        }

    def _sections(self, entry: CacheEntry, rng: random.Random | None) -> dict[str, list[str]]:
        sections = report_sections(entry.id, entry.sections.get("findings") or "", self.structured)
        order = list(SECTION_NAMES)
        if rng is not None:
            rng.shuffle(order)
        return {name: sections[name] for name in order}
