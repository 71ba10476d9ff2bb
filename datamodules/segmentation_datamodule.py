"""The segmentation DataModule (module ``segmentation``): an nnU-Net raw / MSD dataset
(``datamodules/sources/msd.py``, ``data.source: msd``) -> random training patches and whole
evaluation volumes with their label maps.

Splits: the 5-fold cross-validation by case of :func:`datamodules.splits.fold_splits`; the held-out
fold ``data.fold`` is the ``test`` split (nnU-Net reports its held-out fold), and ``data.val_patients``
cases drawn (seeded) from the four training folds are ``val`` (ours: validation during training and
model selection never see the test fold).

Training sample (a pure function of (seed, stream epoch, index), so a resumed run draws the patches an
uninterrupted one would)::

    image (1, X, Y, Z) float32   nnU-Net CT normalisation (``IntensityStats``), crop of data.crop_size
    label (1, X, Y, Z) int64     dataset.json's values 0..K-1
    image_id  index  foreground_centred (bool)

The crop: with probability ``foreground_oversample`` (nnU-Net: 0.33 of a batch) it is centred on a
foreground voxel: a foreground class present in the case, drawn uniformly, then one of its voxels,
drawn uniformly from up to ``LOCATIONS_PER_CLASS`` voxels sampled once per case (as nnU-Net's
preprocessing samples its ``class_locations``); otherwise a uniform crop position (a volume smaller than
the crop lies anywhere inside it). Outside the volume: air and background. No spatial or intensity
augmentation (ours: nnU-Net's augmentation pipeline is not reproduced).

Evaluation sample: the whole cached volume, same keys, batch size 1 (volumes differ in shape).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from datamodules.batching import stack_samples
from datamodules.cache import CacheEntry
from datamodules.errors import DataRootError
from datamodules.loaders import Collate, SplitDataModule, seeded_loader
from datamodules.samplers import EvalSampler
from datamodules.sources.msd import MsdCache, ensure_msd_cache
from datamodules.splits import assign_splits, fold_splits
from datamodules.transforms import as_size3

log = logging.getLogger(__name__)

LOCATIONS_PER_CLASS = 10_000  # nnU-Net's num_samples of its class_locations


def class_names(labels: dict[str, int]) -> list[str]:
    """dataset.json's labels (name -> value) as names in value order; the values must be 0..K-1
    (the network's output channels), as nnU-Net requires too."""
    ordered = sorted(labels.items(), key=lambda item: item[1])
    if [value for _, value in ordered] != list(range(len(ordered))):
        raise DataRootError(
            f"segmentation needs consecutive label values 0..K-1 in dataset.json, got {dict(ordered)}; "
            "renumber the label maps (nnU-Net needs the same)"
        )
    return [name for name, _ in ordered]


def foreground_locations(
    labels: np.ndarray, num_classes: int, case: str, seed: int = 0, n: int = LOCATIONS_PER_CLASS
) -> list[np.ndarray]:
    """For each foreground class 1..K-1, up to ``n`` of its voxels as an (m, 3) int array, drawn
    uniformly without replacement with ``default_rng([seed, crc32(case)])`` (all when fewer; empty
    when the class is absent)."""
    rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
    locations = []
    for value in range(1, num_classes):
        voxels = np.argwhere(labels == value)
        if len(voxels) > n:
            voxels = voxels[np.sort(rng.choice(len(voxels), size=n, replace=False))]
        locations.append(voxels.astype(np.int64))
    return locations


def random_crop_start(
    shape: tuple[int, ...], crop: tuple[int, int, int], rng: np.random.Generator
) -> tuple[int, int, int]:
    """A uniform crop position: inside the volume, or, on an axis shorter than the crop, the volume
    anywhere inside the crop."""
    starts = [int(rng.integers(min(0, s - c), max(0, s - c) + 1)) for s, c in zip(shape, crop, strict=True)]
    return starts[0], starts[1], starts[2]


class SegmentationTrainDataset(Dataset):
    """Random patches with foreground oversampling; ``dataset[(index, epoch)]``."""

    def __init__(
        self,
        cache: MsdCache,
        entries: list[CacheEntry],
        crop: tuple[int, int, int],
        num_classes: int,
        foreground_oversample: float,
        seed: int = 0,
    ) -> None:
        self.cache = cache
        self.entries = entries
        self.crop = crop
        self.foreground_oversample = foreground_oversample
        self.seed = seed
        self.locations = [
            foreground_locations(np.load(cache.label_file(e)), num_classes, e.id, seed) for e in entries
        ]
        empty = [
            e.id for e, locs in zip(entries, self.locations, strict=True) if not any(len(x) for x in locs)
        ]
        if empty:
            log.warning(
                "%d of %d training cases have no foreground voxel; their patches are never foreground-"
                "centred: %s",
                len(empty),
                len(entries),
                ", ".join(empty[:5]),
            )

    def __len__(self) -> int:
        return len(self.entries)

    def crop_start(self, index: int, rng: np.random.Generator) -> tuple[tuple[int, int, int], bool]:
        """The crop's start voxel and whether it is centred on a foreground voxel."""
        entry = self.entries[index]
        present = [locs for locs in self.locations[index] if len(locs)]
        if rng.random() < self.foreground_oversample and present:
            locs = present[int(rng.integers(len(present)))]
            voxel = locs[int(rng.integers(len(locs)))]
            start = [int(v) - c // 2 for v, c in zip(voxel, self.crop, strict=True)]
            return (start[0], start[1], start[2]), True
        return random_crop_start(entry.shape, self.crop, rng), False

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        start, centred = self.crop_start(index, rng)
        entry = self.entries[index]
        image, label = self.cache.read_case_crop(entry, start, self.crop)
        return {
            "image": image[None],
            "label": label[None],
            "image_id": entry.id,
            "index": index,
            "foreground_centred": centred,
        }


class SegmentationVolumeDataset(Dataset):
    """Whole volumes with their label maps, for sliding-window evaluation."""

    def __init__(self, cache: MsdCache, entries: list[CacheEntry]) -> None:
        self.cache = cache
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        image, label = self.cache.load_case(entry)
        return {"image": image[None], "label": label[None], "image_id": entry.id, "index": index}


def segmentation_splits(
    entries: list[CacheEntry], fold: int, val_patients: int, seed: int = 0
) -> dict[str, list[CacheEntry]]:
    """``test`` = the held-out fold ``fold`` of the 5-fold cross-validation; ``val`` =
    ``val_patients`` cases of the other folds; ``train`` = the rest of them."""
    folds = fold_splits(entries, fold)
    inner = assign_splits(folds["train"], val_patients, seed=seed)
    return {"train": inner["train"], "val": inner["val"], "test": folds["val"]}


class SegmentationDataModule(SplitDataModule):
    def __init__(
        self,
        data: DictConfig,
        seed: int = 0,
        foreground_oversample: float = 0.33,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__(data, seed)
        self.foreground_oversample = float(foreground_oversample)
        self.expected_labels = label_names
        self.label_names: list[str] = []

    def prepare_data(self) -> None:
        ensure_msd_cache(self.data)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cache = ensure_msd_cache(self.data, progress=False)  # built by prepare_data: only read here
        self.label_names = class_names(cache.labels)
        if self.expected_labels is not None and list(self.expected_labels) != self.label_names:
            raise DataRootError(
                f"the dataset's labels {self.label_names} (dataset.json) are not the model's "
                f"{list(self.expected_labels)} (segmentation.labels); point data.root at the dataset the "
                "model was built for, or set segmentation.labels=null"
            )
        splits = segmentation_splits(cache.index.entries, int(self.data.fold), int(self.data.val_patients))
        crop = as_size3(self.data.crop_size)
        self.datasets = {
            "train": SegmentationTrainDataset(
                cache, splits["train"], crop, len(self.label_names), self.foreground_oversample, self.seed
            ),
            "val": SegmentationVolumeDataset(cache, splits["val"]),
            "test": SegmentationVolumeDataset(cache, splits["test"]),
        }
        log.info(
            "Segmentation data %s: labels %s; fold %d: %s",
            cache.root,
            self.label_names,
            int(self.data.fold),
            {name: len(d) for name, d in self.datasets.items()},
        )

    def collate_for(self, split: str, dataset: Dataset) -> Collate:
        return stack_samples

    def loader(self, split: str) -> DataLoader:
        """Every volume of ``split`` once, one volume per batch."""
        dataset = self.datasets[split]
        return seeded_loader(
            dataset,
            stack_samples,
            int(self.data.num_workers),
            self.seed,
            sampler=EvalSampler(len(dataset)),
            batch_size=1,
        )
