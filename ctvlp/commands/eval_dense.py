"""``ctvlp eval --tasks dense_zeroshot``: zero-shot segmentation maps of the findings (MaskCLIP).

Every image token goes through the attention pooler's value and output projections into the joint
image-text space (``AttentionPool1D.token_embeddings``) and is scored against each finding's short
prompts; the maps are upsampled to the evaluation crop and compared with the finding masks
(``evaluation/dense_zero_shot.py`` for the metrics, ``datamodules/finding_masks.py`` for the
masks). Only modules whose image encoder pools by attention and that embed text (the COLIPRI
family) have such maps. The data needs finding masks: the phantom writes them; for real data
supply them in the layout of ``datamodules/finding_mask_layout.py``.

Volumes are the evaluation crops (centre crop of ``data.crop_size``, as ``ctvlp eval`` encodes
them); only volumes whose crop shows a masked finding are encoded. The threshold of the Dice is
chosen on the validation split, which is therefore always evaluated.

Writes into the run directory: ``results.json`` / ``results.md`` (merged), ``dense_zeroshot.json``
(thresholds, volumes per finding, volumes without a mask), TensorBoard scalars and a few
``CT slice | mask | map`` images under ``dense_zeroshot/``, and with ``--write-maps`` one float32
NIfTI map per volume and finding plus the crop's finding mask under ``dense_maps/<split>/``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from callbacks.grad_cam_images import overlay_planes
from ctvlp.commands.explain import crop_affine
from ctvlp.config.errors import ConfigError
from ctvlp.config.evaluation_tasks import DENSE_TASK
from ctvlp.config.loader import checkpoint_config
from ctvlp.results import results_table, write_results
from ctvlp.run_dir import Checkpoint, RunDir
from datamodules.cache import CacheEntry, spacing_triplet
from datamodules.finding_mask_layout import (
    FINDING_LABEL_VALUES,
    BadFindingMaskError,
    FindingMasksMissingError,
)
from datamodules.finding_masks import FindingMasks
from datamodules.image_dataset import CroppedVolumeDataset
from datamodules.transforms import crop_start
from evaluation.dense_zero_shot import (
    MAX_VOXELS_PER_VOLUME,
    DenseResults,
    VoxelScores,
    dense_probability_maps,
    dense_zero_shot_metrics,
    voxel_sample,
)
from evaluation.features import encode_texts
from evaluation.runner import hf_tokenize
from evaluation.zero_shot import ClassPrompts, short_class_prompts
from lightning_modules.base import ObjectiveModule
from lightning_modules.nets.attention_pool import AttentionPool1D
from lightning_modules.nets.image_encoder import ImageEncoder
from lightning_modules.nets.text_encoder import load_tokenizer
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)

MAPS_DIR = "dense_maps"
DETAILS_NAME = "dense_zeroshot.json"
TENSORBOARD_IMAGES = 4
BATCH_SIZE = 2


def split_dense_task(spec: str | None) -> tuple[bool, str | None]:
    """(whether ``dense_zeroshot`` was asked for, the other tasks of ``spec`` or None if none remain)."""
    if spec is None:
        return False, None
    names = [t.strip() for t in spec.split(",") if t.strip()]
    rest = [t for t in names if t != DENSE_TASK]
    return len(rest) < len(names), (",".join(rest) or None)


def dense_encoder(module: ObjectiveModule, module_name: str) -> ImageEncoder:
    """The module's image encoder when it has MaskCLIP maps (attention pooler, text embeddings)."""
    encoder = getattr(module, "image_encoder", None)
    pooler = getattr(encoder, "pooler", None)
    if not (
        module.embeds_text() and isinstance(encoder, ImageEncoder) and isinstance(pooler, AttentionPool1D)
    ):
        raise ConfigError(
            f"--tasks {DENSE_TASK} needs an image encoder with an attention pooler and text embeddings "
            f"(the COLIPRI family, model.image.pooler=attention or multi_query); the '{module_name}' "
            f"module has {type(pooler).__name__ if pooler is not None else 'no pooler'}"
            f"{'' if module.embeds_text() else ' and no text encoder'}"
        )
    return encoder


@dataclass
class _Shown:
    """A (volume, finding) kept for the TensorBoard image."""

    tag: str
    image: torch.Tensor  # (X, Y, Z) model input
    mask: torch.Tensor  # (X, Y, Z) bool
    heat: torch.Tensor  # (X, Y, Z) probability


@dataclass
class _SplitScores:
    per_label: dict[str, VoxelScores]
    shown: list[_Shown] = field(default_factory=list)
    without_mask: int = 0


def label_slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


class DenseEvaluation:
    """The maps of one module on one data config, split by split."""

    def __init__(
        self,
        cfg: DictConfig,
        module: ObjectiveModule,
        masks: FindingMasks,
        device: torch.device,
        out: Path,
        write_maps: bool,
        progress: bool,
    ) -> None:
        self.encoder = dense_encoder(module, str(cfg.module))
        self.masks = masks
        self.device = device
        self.out = out
        self.write_maps = write_maps
        self.progress = progress
        self.seed = int(cfg.seed)
        self.spacing = spacing_triplet(masks.spacing)
        values = {name: value for value, name in masks.labels.items()}
        self.label_values = dict(sorted(values.items(), key=lambda item: FINDING_LABEL_VALUES[item[0]]))
        self.normalise = module.embedding_similarity == "cosine"
        tokenize = hf_tokenize(load_tokenizer(cfg.model.text.name_or_path), int(cfg.model.text.max_length))
        with torch.no_grad():
            self.prompts: ClassPrompts = short_class_prompts(
                list(self.label_values),
                lambda texts: encode_texts(module, tokenize, texts, device),
                self.normalise,
            )

    def split(self, name: str, dataset: CroppedVolumeDataset, shown: int) -> _SplitScores:
        """Maps of every volume of the split whose evaluation crop shows a masked finding; the first
        ``shown`` (volume, finding) pairs are kept for TensorBoard."""
        scores = _SplitScores({label: VoxelScores() for label in self.label_values})
        pending: list[tuple[int, np.ndarray]] = []
        values = list(self.label_values.values())
        for index, entry in enumerate(
            tqdm(dataset.entries, desc=f"{DENSE_TASK} ({name})", disable=not self.progress)
        ):
            crop = self.masks.crop(entry, self._start(entry, dataset), dataset.size)
            if crop is None:
                scores.without_mask += 1
            elif np.isin(crop, values).any():
                pending.append((index, crop))
            if len(pending) == BATCH_SIZE or (pending and index == len(dataset.entries) - 1):
                self._score(name, dataset, pending, scores, shown)
                pending = []
        return scores

    @staticmethod
    def _start(entry: CacheEntry, dataset: CroppedVolumeDataset) -> tuple[int, ...]:
        """Where the evaluation crop starts (the dataset's centre crop, no augmentation)."""
        return crop_start(entry.shape, dataset.size, dataset.crop_field)

    @torch.no_grad()
    def _score(
        self,
        split: str,
        dataset: CroppedVolumeDataset,
        pending: list[tuple[int, np.ndarray]],
        scores: _SplitScores,
        shown: int,
    ) -> None:
        images = torch.stack([dataset[index]["image"] for index, _ in pending])
        token_maps = self.encoder.dense(images.to(self.device)).float().cpu()
        maps = dense_probability_maps(token_maps, self.prompts, images.shape[2:], normalise=self.normalise)
        for (index, crop), image, volume_maps in zip(pending, images, maps, strict=True):
            entry = dataset.entries[index]
            sample = voxel_sample(crop.size, MAX_VOXELS_PER_VOLUME, self.seed, index)
            for k, (label, value) in enumerate(self.label_values.items()):
                target = torch.from_numpy(crop == value)
                if not bool(target.any()):
                    continue
                scores.per_label[label].add(volume_maps[k], target, sample)
                if len(scores.shown) < shown:
                    tag = f"{DENSE_TASK}/{split}/{len(scores.shown)}_{label_slug(label)}_{entry.id}"
                    scores.shown.append(_Shown(tag, image[0], target, volume_maps[k]))
                if self.write_maps:
                    self._save(
                        split, entry, dataset, volume_maps[k].numpy().astype(np.float32), label_slug(label)
                    )
            if self.write_maps:
                self._save(split, entry, dataset, np.ascontiguousarray(crop, dtype=np.uint8), "findings")

    def _save(
        self, split: str, entry: CacheEntry, dataset: CroppedVolumeDataset, array: np.ndarray, what: str
    ) -> None:
        """``dense_maps/<split>/<id>_<what>.nii.gz`` on the crop's grid (``ctvlp explain``'s affine)."""
        folder = self.out / MAPS_DIR / split
        folder.mkdir(parents=True, exist_ok=True)
        affine = crop_affine(self.spacing, self._start(entry, dataset))
        nib.save(nib.Nifti1Image(array, affine), folder / f"{entry.id}_{what}.nii.gz")


def overlay_panel(shown: _Shown) -> torch.Tensor:
    """(3, H, 3W) RGB: the axial CT slice with the most mask voxels | the mask over it | the map over it."""
    z = int(shown.mask.sum(dim=(0, 1)).argmax())
    point = (0, 0, z)
    grey = overlay_planes(shown.image, torch.zeros_like(shown.heat), point)["axial"]
    mask = overlay_planes(shown.image, shown.mask.float(), point)["axial"]
    heat = overlay_planes(shown.image, shown.heat, point)["axial"]
    return torch.cat([grey, mask, heat], dim=2)


def _write_outputs(
    out: Path, dense: DenseResults, collected: dict[str, _SplitScores], masks: FindingMasks, step: int
) -> dict[str, float]:
    run = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(run.results, dense.results)
    merged: dict[str, float] = json.loads(run.results.read_text(encoding="utf-8"))
    run.results_table.write_text(results_table(merged) + "\n", encoding="utf-8")
    details = {
        "thresholds": dense.thresholds,
        "volumes_per_finding": dense.volumes,
        "volumes_without_mask": {split: scores.without_mask for split, scores in collected.items()},
        "skipped": masks.skipped,
    }
    (out / DETAILS_NAME).write_text(
        json.dumps(details, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    writer = SummaryWriter(str(run.tensorboard))
    for key, value in dense.results.items():
        writer.add_scalar(key, value, step)
    for scores in collected.values():
        for shown in scores.shown:
            writer.add_image(shown.tag, overlay_panel(shown), step)
    writer.close()
    return dense.results


def evaluate_dense(
    checkpoint: Checkpoint,
    splits: list[str],
    overrides: list[str],
    out: Path | None = None,
    device: str = "auto",
    write_maps: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, float]]:
    """MaskCLIP maps of the findings of ``splits`` (and val, for the thresholds), scored and written."""
    cfg = checkpoint_config(checkpoint.config, overrides)
    module = checkpoint.restore(cfg)
    dense_encoder(module, str(cfg.module))  # a clear error before any data work
    target = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    module = module.to(target).eval()
    datamodule = module_class(str(cfg.module)).build_datamodule(cfg)
    datamodule.prepare_data()  # the cache, built if missing (as ctvlp eval)
    datamodule.setup("validate")
    try:
        masks = FindingMasks.from_data_config(cfg.data)
    except (FindingMasksMissingError, BadFindingMaskError) as error:
        raise ConfigError(str(error)) from error
    run = out or checkpoint.run
    evaluation = DenseEvaluation(cfg, module, masks, target, run, write_maps, progress)
    collected = {
        name: evaluation.split(name, datamodule.datasets[name], TENSORBOARD_IMAGES if name in splits else 0)
        for name in dict.fromkeys(["val", *splits])
    }
    if all(not any(s.volumes for s in scores.per_label.values()) for scores in collected.values()):
        raise ConfigError(
            f"No evaluated volume shows a masked finding in its crop ({len(masks.skipped)} volumes had no "
            f"usable mask; see the warnings): nothing to score for {DENSE_TASK}"
        )
    dense = dense_zero_shot_metrics(
        collected["val"].per_label, {name: collected[name].per_label for name in splits}
    )
    return run, _write_outputs(run, dense, collected, masks, checkpoint.global_step)
