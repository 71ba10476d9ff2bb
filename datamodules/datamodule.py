"""The LightningDataModule: source -> cache (once) -> patient-level splits -> loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from datamodules.cache import CacheEntry, CacheIndex, cache_path
from datamodules.collate import PairedCollator
from datamodules.dataset import PairedVolumeDataset
from datamodules.labels import CT_RATE_LABELS
from datamodules.preprocess import build_cache
from datamodules.samplers import EvalSampler, TrainSampler
from datamodules.sources.ct_rate import resolve_root, scan_ct_rate
from datamodules.splits import assign_splits
from datamodules.text import ReportTransform, load_shortened_findings
from datamodules.transforms import AUGMENTATION_LEVELS

log = logging.getLogger(__name__)

SHORTENED_FINDINGS_FILE = "shortened_findings.json"


def resolve_cache_root(data: DictConfig) -> Path:
    return cache_path(Path(data.cache_dir), data.source, float(data.spacing), data.interpolation)


def check_data(data: DictConfig) -> None:
    """Fail fast (before any model work) on a wrong data root when the cache still has to be
    built. Cheap and side-effect free, so every rank may call it; the build itself happens once,
    in ``prepare_data``."""
    if not (resolve_cache_root(data) / "index.json").exists():
        resolve_root(Path(data.root))


def ensure_cache(data: DictConfig, progress: bool = True) -> CacheIndex:
    """Build the preprocessed cache for ``data`` unless a complete one exists; return its index."""
    cache_root = resolve_cache_root(data)
    if (cache_root / "index.json").exists():
        return CacheIndex.load(cache_root)
    scan = scan_ct_rate(Path(data.root), CT_RATE_LABELS)
    log.info("Preprocessing %d volumes into %s", len(scan.records), cache_root)
    return build_cache(
        scan.records,
        cache_root,
        spacing=float(data.spacing),
        interpolation=data.interpolation,
        label_names=CT_RATE_LABELS,
        workers=int(data.preprocess_workers),
        progress=progress,
        rejected=scan.rejected,
    )


class CTDataModule(L.LightningDataModule):
    """Serves paired CT volume + report batches (see DESIGN.md for the batch dict)."""

    def __init__(self, data: DictConfig, tokenizer: PreTrainedTokenizerBase, max_length: int, seed: int = 0):
        super().__init__()
        self.data = data
        self.collate = PairedCollator(tokenizer, max_length)
        self.seed = seed
        self.splits: dict[str, list[CacheEntry]] = {}
        self.label_names: list[str] = list(CT_RATE_LABELS)

    def prepare_data(self) -> None:
        # Runs on one process per node only: the cache build is not repeated by every rank.
        ensure_cache(self.data)

    def _report_transform(self) -> ReportTransform:
        text = self.data.text
        sidecar = text.shortened_findings_json or str(Path(self.data.root) / SHORTENED_FINDINGS_FILE)
        shortened = load_shortened_findings(Path(sidecar)) if Path(sidecar).exists() else {}
        if text.shorten_p > 0 and not shortened:
            log.warning(
                "data.text.shorten_p=%s but no shortened findings at %s: not applied", text.shorten_p, sidecar
            )
        return ReportTransform(text.section, text.sentence_shuffle, text.shorten_p, shortened)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        index = CacheIndex.load(resolve_cache_root(self.data))
        self.label_names = list(index.label_names)
        self.splits = assign_splits(index.entries, int(self.data.val_patients), seed=0)
        transform = self._report_transform()
        augmentation = AUGMENTATION_LEVELS[self.data.augmentation.level]
        crop = int(self.data.crop_size)
        self.datasets = {
            "train": PairedVolumeDataset(
                self.splits["train"], crop, transform, True, augmentation, self.seed
            ),
            "val": PairedVolumeDataset(self.splits["val"], crop, transform, False),
            "test": PairedVolumeDataset(self.splits["test"], crop, transform, False),
        }
        for name, dataset in self.datasets.items():
            if len(dataset) == 0:
                raise ValueError(f"The '{name}' split is empty; check data.root and data.val_patients")

    def _loader(self, dataset: PairedVolumeDataset, sampler: Sampler) -> DataLoader:
        workers = int(self.data.num_workers)
        return DataLoader(
            dataset,
            batch_size=int(self.data.batch_size),
            sampler=sampler,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
            # Workers start once (a worker start costs seconds); the sampler carries the epoch.
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            # Worker seeds come from this generator, not the global torch RNG, so starting a
            # loader (e.g. on resume) leaves the model's dropout randomness untouched.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _global_step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        sampler = TrainSampler(len(dataset), int(self.data.batch_size), self.seed, self._global_step)
        return self._loader(dataset, sampler)

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader for ``val`` or ``test``: centre crop, no augmentation, every
        volume once (shards padded under DDP; batches carry ``index`` for de-duplication)."""
        dataset = self.datasets[split]
        return self._loader(dataset, EvalSampler(len(dataset)))

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
