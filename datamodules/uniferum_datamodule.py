"""The Uniferum DataModule: cached volumes (+ organ masks) -> task samples (train) and per-volume
evaluation batches over every task (val / test).

Training batch (one task per sample, ``datamodules/uniferum_tasks.py``)::

    image (B, 1, X, Y, Z) in [-1, 1]   image_id   index   source   kind = TASK
    task_index (B,)   task_text   input_ids / attention_mask (B, L): the task text, no special tokens
    target (B,) 1 / 0 (NaN for segmentation samples)   is_seg (B,) bool
    seg_target (B, N, u^3): the patchified coarse mask (zeros for classification samples)

Evaluation batch (one volume per sample, every task)::

    image   image_id   index   source   kind = VOLUME
    labels (B, T) targets of the classification tasks (NaN: unknown, or a segmentation task)
    seg_targets (B, S, N, u^3) and seg_available (B, S) for the S segmentation tasks
    task_input_ids / task_attention_mask (T, L), task_names, task_kinds, task_held_out: the tasks

Sources: ``data.sources``, or the ``data.source`` / ``data.root`` shorthand, read as
``CTDataModule`` reads them (``datamodules/mixing.py``); training on CT-RATE + RAD-ChestCT + Merlin
is that one list. Each source is preprocessed once into its own cache, with its organ masks, at its
own ``spacing`` (else ``data.spacing``; ``datamodules/datamodule.py``), and split by patient on its
own (its official validation split when it has one); every source's val / test volumes are
evaluated, each task on the volumes that know its label. A source's ``weight`` does not set the mix
here: the per-task balanced draw does. The crops are read at each cache's spacing and resampled to
the same model input; the crop boxes are computed once per cache (``datamodules/uniferum_geometry.py``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from ctvlp.config.errors import ConfigError
from datamodules.batching import TASK, VOLUME, stack_samples
from datamodules.cache import CacheEntry, CacheIndex
from datamodules.datamodule import ensure_source_cache, source_cache_root, source_spacing
from datamodules.loaders import Collate, SplitDataModule
from datamodules.mixing import data_sources
from datamodules.seg_targets import seg_target
from datamodules.splits import assign_splits
from datamodules.uniferum_geometry import (
    CropBox,
    UniferumGeometry,
    UniferumView,
    View,
    ensure_boxes,
    organ_available,
)
from datamodules.uniferum_tasks import (
    CLASSIFICATION_KINDS,
    SEGMENTATION,
    EpochSamples,
    Task,
    TaskSampler,
    build_tasks,
    task_label,
)

log = logging.getLogger(__name__)


def geometry_from_config(uniferum: DictConfig) -> UniferumGeometry:
    return UniferumGeometry(
        input_shape=tuple(int(s) for s in uniferum.input_shape),  # type: ignore[arg-type]
        field_mm=tuple(float(s) for s in uniferum.field_mm),  # type: ignore[arg-type]
        train_field_mm=tuple(float(s) for s in uniferum.train_field_mm),  # type: ignore[arg-type]
        lung_margin_mm=float(uniferum.lung_margin_mm),
    )


# ----------------------------------------------------------------------------------------- datasets
class _VolumeSource:
    """What both datasets share: entries, their crop boxes, the views (one per source: each reads
    its own cache's spacing) and the target geometry."""

    def __init__(
        self,
        entries: list[CacheEntry],
        boxes: dict[str, CropBox],
        views: dict[str, UniferumView],
        tasks: list[Task],
        downsample: int,
        u: int,
    ) -> None:
        self.entries = entries
        self.boxes = boxes
        self.views = views
        self.tasks = tasks
        self.downsample = downsample
        self.u = u
        (geometry,) = {v.geometry for v in views.values()}
        grid = [s // downsample for s in geometry.input_shape]
        self.n_tokens = int(np.prod(grid))

    def view(self, entry: CacheEntry, rng: np.random.Generator | None, with_masks: bool) -> View:
        """The model input of ``entry`` (augmented when ``rng`` is given)."""
        return self.views[entry.source](entry, self.boxes[entry.id], rng, with_masks=with_masks)

    def empty_target(self) -> torch.Tensor:
        return torch.zeros(self.n_tokens, self.u**3)

    def target(self, view: View, organ: str) -> torch.Tensor:
        mask = view.organ(organ)
        if mask is None:
            return self.empty_target()
        return seg_target(mask, self.downsample, self.u)


class TaskTrainDataset(Dataset):
    """One (volume, task, target) per item; item ``(i, epoch)`` is the i-th sample of that epoch's
    balanced draw, and its augmentation is a pure function of ``(seed, epoch, i)``."""

    def __init__(
        self, volumes: _VolumeSource, sampler: TaskSampler, seed: int = 0, augment: bool = True
    ) -> None:
        self.volumes = volumes
        self.sampler = sampler
        self.seed = seed
        self.augment = augment
        self._drawn: dict[int, EpochSamples] = {}

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch_samples(self, epoch: int) -> EpochSamples:
        if epoch not in self._drawn:
            self._drawn = {epoch: self.sampler.draw(epoch)}  # keep one epoch: workers move forward
        return self._drawn[epoch]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        samples = self.epoch_samples(epoch)
        v, t = int(samples.volume[index]), int(samples.task[index])
        entry, task = self.volumes.entries[v], self.volumes.tasks[t]
        is_seg = task.kind == SEGMENTATION
        rng = np.random.default_rng([self.seed, epoch, index]) if self.augment else None
        view = self.volumes.view(entry, rng, with_masks=is_seg)
        return {
            "image": view.image,
            "image_id": entry.id,
            "index": index,
            "source": entry.source,
            "kind": TASK,
            "task_index": t,
            "task_text": task.text,
            "target": float(samples.target[index]),
            "is_seg": is_seg,
            "seg_target": self.volumes.target(view, task.organ) if is_seg else self.volumes.empty_target(),
        }


class TaskEvalDataset(Dataset):
    """One volume per item with its targets for every task (centre field, no augmentation)."""

    def __init__(self, volumes: _VolumeSource) -> None:
        self.volumes = volumes
        self.seg_tasks = [t for t in volumes.tasks if t.kind == SEGMENTATION]

    def __len__(self) -> int:
        return len(self.volumes.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.volumes.entries[index]
        view = self.volumes.view(entry, None, with_masks=bool(self.seg_tasks))
        labels = [
            task_label(entry.labels, entry.source, t) if t.kind in CLASSIFICATION_KINDS else math.nan
            for t in self.volumes.tasks
        ]
        available = [organ_available(entry, t.organ) for t in self.seg_tasks]
        targets = [
            self.volumes.target(view, t.organ) if ok else self.volumes.empty_target()
            for t, ok in zip(self.seg_tasks, available, strict=True)
        ]
        return {
            "image": view.image,
            "image_id": entry.id,
            "index": index,
            "source": entry.source,
            "kind": VOLUME,
            "labels": torch.tensor(labels, dtype=torch.float32),
            "seg_targets": torch.stack(targets) if targets else torch.zeros(0, self.volumes.n_tokens, 0),
            "seg_available": torch.tensor(available, dtype=torch.bool),
        }


# ----------------------------------------------------------------------------------------- collation


def tokenize_tasks(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Task texts as the fusion reads them: word pieces only (its own [CLS]/[SEP] are learned)."""
    tokens = tokenizer(
        texts,
        padding="longest",
        truncation=True,
        max_length=max_length,
        add_special_tokens=False,
        return_tensors="pt",
    )
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


class TaskCollator:
    """Training batches: stack, and tokenise each sample's task text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = stack_samples(samples)
        batch.update(tokenize_tasks(self.tokenizer, batch["task_text"], self.max_length))
        return batch


class EvalCollator:
    """Evaluation batches: stack, and attach the tokenised texts of every task."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, tasks: list[Task]) -> None:
        self.tokenizer = tokenizer  # the evaluation callback and `ctvlp eval` read it
        self.max_length = max_length
        self.tasks = tasks
        tokens = tokenize_tasks(tokenizer, [t.text for t in tasks], max_length)
        self.task_input_ids, self.task_attention_mask = tokens["input_ids"], tokens["attention_mask"]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = stack_samples(samples)
        batch["task_input_ids"] = self.task_input_ids
        batch["task_attention_mask"] = self.task_attention_mask
        batch["task_names"] = [t.name for t in self.tasks]
        batch["task_kinds"] = [t.kind for t in self.tasks]
        batch["task_held_out"] = [t.held_out for t in self.tasks]
        return batch


# --------------------------------------------------------------------------------------- DataModule
class UniferumDataModule(SplitDataModule):
    def __init__(
        self, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, downsample: int, seed: int = 0
    ) -> None:
        super().__init__(cfg.data, seed)
        self.cfg = cfg
        self.uniferum = cfg.uniferum
        self.tokenizer = tokenizer
        self.max_length = int(cfg.model.text.max_length)
        self.downsample = int(downsample)
        self.u = int(cfg.uniferum.u)
        self.geometry = geometry_from_config(cfg.uniferum)
        for source in data_sources(self.data):  # Uniferum resamples from an isotropic cache only
            spacing = source_spacing(self.data, source)
            if not isinstance(spacing, float):
                raise ConfigError(
                    f"Uniferum reads an isotropic cache, but source {source.name!r} has the anisotropic "
                    f"spacing {list(spacing)} mm; set data.spacing (or data.sources[].spacing) to one "
                    "number, e.g. data.spacing=1.5"
                )
        self.collate = TaskCollator(tokenizer, self.max_length)
        self.splits: dict[str, list[CacheEntry]] = {}
        self.tasks: list[Task] = []

    def prepare_data(self) -> None:
        for source in data_sources(self.data):
            index = ensure_source_cache(self.data, source, masks=True, ts_labels=True)
            ensure_boxes(index, self.geometry.lung_margin_mm)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        boxes: dict[str, CropBox] = {}
        label_names: dict[str, list[str]] = {}
        views: dict[str, UniferumView] = {}
        self.splits = {"train": [], "val": [], "test": []}
        for source in data_sources(self.data):
            index = CacheIndex.load(source_cache_root(self.data, source))
            boxes.update(ensure_boxes(index, self.geometry.lung_margin_mm))
            label_names[source.name] = list(index.label_names)
            views[source.name] = UniferumView(self.geometry, index.spacing)
            for split, part in assign_splits(index.entries, int(self.data.val_patients), seed=0).items():
                self.splits[split] += part
        organs = [str(o) for o in self.uniferum.seg_organs]
        self.tasks = build_tasks(
            label_names, list(self.uniferum.held_out_labels), organs, dict(self.uniferum.task_texts)
        )

        def volumes(split: str) -> _VolumeSource:
            return _VolumeSource(self.splits[split], boxes, views, self.tasks, self.downsample, self.u)

        train = volumes("train")
        seg_organs = set(organs) if float(self.uniferum.seg_fraction) > 0 else set()
        sampler = TaskSampler(
            self.tasks,
            [
                (e.source, e.labels, [o for o in organs if o in seg_organs and organ_available(e, o)])
                for e in train.entries
            ],
            seg_fraction=float(self.uniferum.seg_fraction),
            seed=self.seed,
        )
        log.info(
            "Uniferum tasks: %d classification, %d segmentation; %d training samples per epoch (%d seg)",
            sum(t.kind in CLASSIFICATION_KINDS for t in self.tasks),
            sum(t.kind == SEGMENTATION for t in self.tasks),
            len(sampler),
            sampler.n_segmentation,
        )
        self.datasets = {
            "train": TaskTrainDataset(train, sampler, self.seed, bool(self.uniferum.augment)),
            "val": TaskEvalDataset(volumes("val")),
            "test": TaskEvalDataset(volumes("test")),
        }
        self.eval_collate = EvalCollator(self.tokenizer, self.max_length, self.tasks)
        needed = ("val", "test") if stage in ("validate", "test") else tuple(self.datasets)
        for name, dataset in self.datasets.items():  # evaluating needs no training samples
            if name in needed and len(dataset) == 0:
                raise ValueError(
                    f"The uniferum '{name}' split is empty; check data.root, data.val_patients and the labels"
                )

    @property
    def label_names(self) -> list[str]:
        return [t.name for t in self.tasks if t.kind in CLASSIFICATION_KINDS]

    def collate_for(self, split: str, dataset: Dataset) -> Collate:
        """Training batches tokenise each sample's task; evaluation batches carry every task."""
        return self.collate if split == "train" else self.eval_collate
