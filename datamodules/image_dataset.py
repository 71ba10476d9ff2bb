"""Datasets over cache entries: the crop / augmentation / labels every sample shares, and the
image-only dataset (no report)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.batching import IMAGE_ONLY, SECOND_VIEW, VOLUME
from datamodules.cache import AIR_HU, CacheEntry, read_crop, read_mask_crop
from datamodules.organ_classes import has_every_organ, organ_class_map, unknown_class_map
from datamodules.transforms import (
    CACHE_HU_RANGE,
    IntensityAugmentation,
    SpatialAugmentation,
    SpatialParams,
    apply_spatial,
    as_size3,
    centre_crop_start,
    crop_start,
    hu_to_input,
    spatial_read_box,
)


class Crop(NamedTuple):
    index: int
    entry: CacheEntry
    image: torch.Tensor  # (1, X, Y, Z) in [-1, 1]
    rng: np.random.Generator | None  # training: the sample's stream, continued by the caller
    organ_classes: torch.Tensor | None  # (X, Y, Z) uint8 with ``organ_masks``


# Mixed into the second view's seed, so its stream is independent of the sample's own.
_SECOND_VIEW_STREAM = 0x56494557  # "VIEW"


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
    lacks a mask), cut from the same box and moved by the same spatial augmentation (nearest
    sampling), so it still matches the image. ``spatial`` (``data.spatial_augmentation``): a small
    rotation / zoom / mirroring of training crops, drawn after the crop start and before the
    intensity augmentation from the same per-sample stream (``None``: no draw, the stream as
    before); ``spacing`` (mm, x y z, or one number) keeps rotations rigid in an anisotropic cache.

    ``second_view`` (RadFound's CC-MIM): every sample also carries ``SECOND_VIEW``, another crop of
    the same volume, drawn like a training crop (start, spatial and intensity augmentation) from
    its own stream, ``(seed, epoch, index, VIEW)``, so the first view and everything drawn after it
    are as without it. In evaluation the second view is a random crop without augmentation from
    ``(seed, VIEW, index)``: the same at every validation, so its losses compare across steps.
    """

    kind = VOLUME
    # False: training samples take the centre crop too (their augmentation, if any, still draws
    # from the sample's stream): a frozen encoder's token cache needs the same crop at every epoch.
    random_crop = True

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
        spatial: SpatialAugmentation | None = None,
        spacing: float | Sequence[float] = 1.0,
        second_view: bool = False,
    ) -> None:
        self.entries = entries
        self.second_view = second_view
        self.spatial = spatial
        self.spacing = (
            (float(spacing),) * 3 if isinstance(spacing, int | float) else tuple(float(s) for s in spacing)
        )
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
        image, (read_start, read_size, params) = self._view(entry, rng, augment=True)
        organ_classes = self._classes(entry, read_start, read_size, params) if self.organ_masks else None
        return Crop(index, entry, image, rng, organ_classes)

    def _view(
        self, entry: CacheEntry, rng: np.random.Generator | None, augment: bool
    ) -> tuple[torch.Tensor, tuple[tuple[int, ...], tuple[int, ...], SpatialParams]]:
        """A crop of ``entry`` (random with ``rng``, else the centre one), augmented from ``rng``
        when ``augment``; with the box it was read from and its spatial parameters."""
        start = crop_start(entry.shape, self.size, self.crop_field, rng if self.random_crop else None)
        augment = augment and rng is not None
        params = self.spatial.draw(rng) if augment and self.spatial is not None else SpatialParams()
        read_start, read_size = spatial_read_box(start, self.size, params, self.spacing)
        volume = self._outside_field_to_air(entry, read_crop(entry, read_start, read_size), read_start)
        image = apply_spatial(hu_to_input(volume, self.hu_window), self.size, params, self.spacing)
        if augment and self.augmentation is not None:
            image = self.augmentation(image, rng)
        return image, (read_start, read_size, params)

    def _second_view(self, key: int | tuple[int, int]) -> torch.Tensor:
        """Another crop of the sample's volume from its own stream (see the class docstring)."""
        index, epoch = key if isinstance(key, tuple) else (key, None)
        training = self.train and epoch is not None
        seed = (
            [self.seed, epoch, index, _SECOND_VIEW_STREAM]
            if training
            else [self.seed, _SECOND_VIEW_STREAM, index]
        )
        image, _ = self._view(self.entries[index], np.random.default_rng(seed), augment=training)
        return image

    def _outside_field_to_air(
        self, entry: CacheEntry, volume: np.ndarray, start: tuple[int, ...], fill: int = AIR_HU
    ) -> np.ndarray:
        """A read that reaches past ``crop_field`` (only the spatial margin can) holds air there, as
        if the volume had been padded / cropped to the field first."""
        if self.crop_field is None:
            return volume
        origin = centre_crop_start(entry.shape, self.crop_field)
        index = []
        for begin, length, lo, extent in zip(start, volume.shape, origin, self.crop_field, strict=True):
            local_lo, local_hi = lo - begin, lo + extent - begin
            if local_lo <= 0 and local_hi >= length:
                index.append(None)
            else:
                index.append((max(local_lo, 0), min(max(local_hi, 0), length)))
        if all(i is None for i in index):
            return volume
        keep = np.zeros(volume.shape, dtype=bool)
        keep[tuple(slice(*i) if i is not None else slice(None) for i in index)] = True
        return np.where(keep, volume, np.asarray(fill, dtype=volume.dtype))

    def _classes(
        self, entry: CacheEntry, start: tuple[int, ...], size: tuple[int, ...], params: SpatialParams
    ) -> torch.Tensor:
        if not has_every_organ(entry.masks):
            return torch.from_numpy(unknown_class_map(self.size))
        bits = self._outside_field_to_air(entry, read_mask_crop(entry, start, size), start, fill=0)
        bits = apply_spatial(torch.from_numpy(bits), self.size, params, self.spacing, mode="nearest")
        return torch.from_numpy(organ_class_map(bits.numpy()))

    def _sample(self, crop: Crop, key: int | tuple[int, int]) -> dict[str, Any]:
        entry = crop.entry
        labels = torch.tensor(entry.labels, dtype=torch.float32)
        organs = {} if crop.organ_classes is None else {"organ_classes": crop.organ_classes}
        views = {SECOND_VIEW: self._second_view(key)} if self.second_view else {}
        return {
            **organs,
            **views,
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
        return self._sample(self._crop(key), key)
