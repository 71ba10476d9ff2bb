"""The LightningDataModule: source -> cache (once) -> patient-level splits -> loaders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from datamodules.batching import IMAGE_ONLY, PAIRED, stack_samples
from datamodules.cache import CacheEntry, CacheIndex, Spacing, as_spacing, cache_path
from datamodules.cache_provenance import reusable_index
from datamodules.collate import PairedCollator
from datamodules.dataset import PairedVolumeDataset
from datamodules.image_dataset import ImageOnlyVolumeDataset
from datamodules.label_tables import apply_label_table
from datamodules.labels import CT_RATE_LABELS
from datamodules.loaders import Collate, SplitDataModule
from datamodules.mixing import DataSource, KindCollator, MixedDataset, data_sources, project_entries
from datamodules.organ_classes import has_every_organ
from datamodules.preprocess import build_cache
from datamodules.report_sections import load_structured_sections
from datamodules.samplers import MixedBatchSampler
from datamodules.splits import assign_splits
from datamodules.text import ReportTransform, load_shortened_findings
from datamodules.totalseg import ORGANS
from datamodules.transforms import (
    AUGMENTATION_LEVELS,
    CACHE_HU_RANGE,
    SPATIAL_AUGMENTATION_LEVELS,
    Size3,
    as_size3,
)

if TYPE_CHECKING:
    from datamodules.cappa_targets import CapPaTargetBuilder

log = logging.getLogger(__name__)

SHORTENED_FINDINGS_FILE = "shortened_findings.json"
STRUCTURED_FINDINGS_FILE = "structured_findings.json"


def source_spacing(data: DictConfig, source: DataSource) -> Spacing:
    """The cache spacing of one source: its own ``spacing`` if set, else ``data.spacing``; a float
    (isotropic) or (x, y, z) mm."""
    return source.spacing if source.spacing is not None else as_spacing(data.spacing)


def crop_settings(data: DictConfig) -> tuple[Size3, Size3 | None, tuple[float, float]]:
    """``(crop_size, crop_field, hu_window)`` of a data config: (x, y, z) voxels, the centred field
    the crops are drawn in (None: the whole volume) and the HU window mapped to [-1, 1]."""
    field = data.get("crop_field")
    window = data.get("hu_window")
    lo, hi = (float(window[0]), float(window[1])) if window is not None else CACHE_HU_RANGE
    return as_size3(data.crop_size), None if field is None else as_size3(field, "crop_field"), (lo, hi)


def source_cache_root(data: DictConfig, source: DataSource) -> Path:
    return cache_path(
        Path(data.cache_dir), source.cache_name, source_spacing(data, source), data.interpolation
    )


def resolve_cache_root(data: DictConfig) -> Path:
    """The cache of the primary source (the only one for the ``data.source`` shorthand)."""
    return source_cache_root(data, data_sources(data)[0])


def check_data(data: DictConfig) -> None:
    """Fail fast (before any model work) on a wrong data root when a cache still has to be
    built. Cheap and side-effect free, so every rank may call it; the build itself happens once,
    in ``prepare_data``."""
    for source in data_sources(data):
        if not (source_cache_root(data, source) / "index.json").exists():
            source.spec.resolve_root(Path(source.root))


def ensure_source_cache(
    data: DictConfig,
    source: DataSource,
    progress: bool = True,
    masks: bool = False,
    ts_labels: bool = False,
) -> CacheIndex:
    """The cache of one source: reused when its index exists, every entry's volume file is
    complete and the dataset is the one it was built from (``datamodules.cache_provenance``);
    otherwise (re)built, which reuses the volumes of an earlier run whose inputs are unchanged.

    ``masks``: the organ bit field is needed too, and ``ts_labels`` the TotalSegmentator ``total``
    label maps (Uniferum's organ tasks; 1 byte a voxel, so only written when asked for): a cache
    built without them is completed when the source has them (its volumes are reused)."""
    cache_root = source_cache_root(data, source)
    label_table = Path(source.labels) if source.labels else None
    index = reusable_index(cache_root, Path(source.root), label_table)
    has_masks = index is not None and (not masks or any(e.masks for e in index.entries))
    if has_masks and (not ts_labels or any(e.ts_labels for e in index.entries)):
        return index
    label_names = list(source.spec.label_names)
    scan = source.spec.scan_records(Path(source.root), label_names, source.all_reconstructions)
    if label_table is not None:
        scan.records = apply_label_table(scan.records, label_table, label_names)
    if not ts_labels:
        for record in scan.records:
            record.ts_total = None
    if index is not None and not any(r.masks or r.ts_total is not None for r in scan.records):
        return index  # the source has no organ masks: nothing to add
    log.info(
        "Preprocessing %d %s volumes%s into %s",
        len(scan.records),
        source.name,
        ", adding organ masks" if index is not None else "",
        cache_root,
    )
    return build_cache(
        scan.records,
        cache_root,
        spacing=source_spacing(data, source),
        interpolation=data.interpolation,
        label_names=label_names,
        workers=int(data.preprocess_workers),
        progress=progress,
        rejected=scan.rejected,
        source_root=Path(source.root),
        label_table=label_table,
    )


def ensure_cache(data: DictConfig, progress: bool = True) -> CacheIndex:
    """Build the cache of every configured source unless complete; return the primary's index."""
    sources = data_sources(data)
    masks = bool(data.get("organ_masks", False))
    indexes = [ensure_source_cache(data, source, progress, masks=masks) for source in sources]
    return indexes[0]


class CTDataModule(SplitDataModule):
    """Serves paired CT volume + report batches (the batch dict: ``datamodules/batching.py``).

    ``cappa_targets`` (report generation active) adds the tokenised CapPa targets, ``cappa``.
    """

    def __init__(
        self,
        data: DictConfig,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        seed: int = 0,
        cappa_targets: CapPaTargetBuilder | None = None,
    ):
        super().__init__(data, seed)
        self.collate = PairedCollator(tokenizer, max_length, cappa_targets)
        self.splits: dict[str, list[CacheEntry]] = {}
        self.label_names: list[str] = list(CT_RATE_LABELS)
        # data.organ_masks: samples carry their crop's organ class map (GreenRFM's L_seg)
        self.organ_masks = bool(data.get("organ_masks", False))

    def prepare_data(self) -> None:
        # Runs on one process per node only: the cache build is not repeated by every rank.
        ensure_cache(self.data)

    def _report_transform(self, root: str, primary: bool = True) -> ReportTransform:
        """The configured text transform with a source's shortened-findings sidecar: the file
        ``data.text.shortened_findings_json`` names for the primary source, else the one in its root."""
        text = self.data.text
        configured = text.shortened_findings_json if primary else None
        sidecar = Path(configured or Path(root) / SHORTENED_FINDINGS_FILE)
        shortened = load_shortened_findings(sidecar) if sidecar.exists() else {}
        if text.shorten_p > 0 and not shortened:
            log.warning(
                "data.text.shorten_p=%s but no shortened findings at %s: not applied", text.shorten_p, sidecar
            )
        variants = int(text.shuffles_per_report)
        if variants > 0 and (text.sentence_shuffle or text.shorten_p > 0):
            log.warning(
                "data.text.shuffles_per_report=%d: text augmentation limited to %d variants per report "
                "so the frozen text cache hits (0 = a fresh draw every step, as in the paper)",
                variants,
                variants,
            )
        return ReportTransform(text.section, text.sentence_shuffle, text.shorten_p, shortened, variants)

    def _structured_sections(self, root: str, primary: bool = True) -> dict[str, dict[str, list[str]]]:
        """A source's structured-Findings sidecar (``data.text.structured_findings_json`` for the
        primary source, else the one in its root) if there is one; else the keyword rules apply."""
        configured = self.data.text.get("structured_findings_json") if primary else None
        sidecar = Path(configured or Path(root) / STRUCTURED_FINDINGS_FILE)
        if configured and not sidecar.exists():
            raise FileNotFoundError(f"data.text.structured_findings_json={configured} does not exist")
        return load_structured_sections(sidecar) if sidecar.exists() else {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        sources = data_sources(self.data)
        if len(sources) > 1 or sources[0].kind != PAIRED:
            self._setup_mixed(sources)
            self._log_organ_coverage()
            return
        index = CacheIndex.load(resolve_cache_root(self.data))
        self.label_names = list(index.label_names)
        self.splits = assign_splits(index.entries, int(self.data.val_patients), seed=0)
        transform = self._report_transform(self.data.root)
        structured = self._structured_sections(self.data.root)
        augmentation = AUGMENTATION_LEVELS[self.data.augmentation.level]
        crop, field, window = crop_settings(self.data)
        crop_kwargs = {
            "crop_field": field,
            "hu_window": window,
            "organ_masks": self.organ_masks,
            "second_view": self.second_view,
        }
        self.datasets = {
            "train": PairedVolumeDataset(
                self.splits["train"],
                crop,
                transform,
                True,
                augmentation,
                self.seed,
                structured,
                **crop_kwargs,
                **self._spatial(sources[0]),
            ),
            "val": PairedVolumeDataset(
                self.splits["val"], crop, transform, False, structured=structured, **crop_kwargs
            ),
            "test": PairedVolumeDataset(
                self.splits["test"], crop, transform, False, structured=structured, **crop_kwargs
            ),
        }
        for name, dataset in self.datasets.items():
            if len(dataset) == 0:
                raise ValueError(f"The '{name}' split is empty; check data.root and data.val_patients")
        self._log_organ_coverage()

    def _log_organ_coverage(self) -> None:
        """With ``data.organ_masks``: how many volumes per split have every organ's mask (only
        those get a segmentation target); a warning when some do not."""
        if not self.organ_masks:
            return
        counts = {name: sum(has_every_organ(e.masks) for e in self.splits[name]) for name in self.splits}
        totals = {name: len(self.splits[name]) for name in self.splits}
        text = ", ".join(f"{name} {counts[name]}/{totals[name]}" for name in self.splits)
        if counts != totals:
            log.warning(
                "data.organ_masks: only some volumes have every organ mask (%s; %s); the others get "
                "no segmentation target",
                text,
                ", ".join(ORGANS),
            )
        else:
            log.info("data.organ_masks: every volume has organ masks (%s)", text)

    # ---------------------------------------------------------------- several sources (mixing.py)
    mixed_train: MixedDataset | None = None
    mixed_sampling: tuple[list[int], list[str], list[float]] | None = None
    # Which batch kind each training step of a mix must draw (``None``: any, by weight); set by
    # the objective, e.g. ColipriModule's objective schedule (vision-language steps: PAIRED).
    kind_plan: Callable[[int], str | None] | None = None
    # Every sample also carries a second crop of its volume (``batching.SECOND_VIEW``); set by the
    # objective before setup, e.g. the MAE objective with RadFound's cross-view term.
    second_view: bool = False

    def _source_dataset(
        self, source: DataSource, entries: list[CacheEntry], train: bool, primary: bool, seed: int = 0
    ) -> PairedVolumeDataset | ImageOnlyVolumeDataset:
        crop, field, window = crop_settings(self.data)
        augmentation = AUGMENTATION_LEVELS[self.data.augmentation.level] if train else None
        masks = self.organ_masks
        if source.kind == PAIRED:
            transform = self._report_transform(source.root, primary)
            structured = self._structured_sections(source.root, primary)
            return PairedVolumeDataset(
                entries,
                crop,
                transform,
                train,
                augmentation,
                seed,
                structured,
                field,
                window,
                masks,
                **(self._spatial(source) if train else {}),
                second_view=self.second_view,
            )
        spatial = self._spatial(source) if train else {}
        return ImageOnlyVolumeDataset(
            entries,
            crop,
            train,
            augmentation,
            seed,
            field,
            window,
            masks,
            **spatial,
            second_view=self.second_view,
        )

    def _spatial(self, source: DataSource) -> dict[str, Any]:
        """The training datasets' ``data.spatial_augmentation`` and the source's cache spacing."""
        level = self.data.get("spatial_augmentation", "none")
        return {"spatial": SPATIAL_AUGMENTATION_LEVELS[level], "spacing": source_spacing(self.data, source)}

    def _setup_mixed(self, sources: list[DataSource]) -> None:
        """Several sources (or one image-only source): the primary (first) gives the label space
        and the val/test splits; every source adds its training volumes to the weighted mix."""
        primary = sources[0]
        indexes = {s.name: CacheIndex.load(source_cache_root(self.data, s)) for s in sources}
        self.label_names = list(indexes[primary.name].label_names)
        entries = {
            s.name: project_entries(
                indexes[s.name].entries, s.name, indexes[s.name].label_names, primary.name, self.label_names
            )
            for s in sources
        }
        self.splits = assign_splits(entries[primary.name], int(self.data.val_patients), seed=0)
        parts, sizes, kinds, weights = [], [], [], []
        for j, source in enumerate(sources):
            train = (
                self.splits["train"] if j == 0 else [e for e in entries[source.name] if e.split == "train"]
            )
            if not train:
                raise ValueError(f"Source {source.name!r} (root {source.root}) has no training volumes")
            parts.append(self._source_dataset(source, train, True, j == 0, seed=self.seed + 7919 * j))
            sizes.append(len(train))
            kinds.append(source.kind)
            weights.append(source.weight)
        self.mixed_train = MixedDataset(parts)
        self.mixed_sampling = (sizes, kinds, weights)
        self.datasets = {
            "train": parts[0],
            "val": self._source_dataset(primary, self.splits["val"], False, True),
            "test": self._source_dataset(primary, self.splits["test"], False, True),
        }
        log.info(
            "Mixed training: %s",
            ", ".join(
                f"{s.name} ({s.kind}, weight {s.weight:g}): {n}" for s, n in zip(sources, sizes, strict=True)
            ),
        )
        for name in ("train", "val") if primary.kind != PAIRED else ("train", "val", "test"):
            if len(self.datasets[name]) == 0:
                raise ValueError(
                    f"The '{name}' split of {primary.name} is empty; check its root and data.val_patients"
                )

    def collate_for(self, split: str, dataset: object) -> Collate:
        return stack_samples if isinstance(dataset, ImageOnlyVolumeDataset) else self.collate

    def train_dataloader(self) -> DataLoader:
        if self.mixed_train is None or self.mixed_sampling is None:
            return super().train_dataloader()
        sizes, kinds, weights = self.mixed_sampling
        # The sampler counts micro-batches; the plan is by optimiser step (several under accumulation).
        plan, accumulation = self.kind_plan, self._accumulation()
        batch_sampler = MixedBatchSampler(
            sizes,
            kinds,
            weights,
            int(self.data.batch_size),
            self.seed,
            self._global_step,
            kind_plan=None if plan is None else lambda step: plan(step // accumulation),
        )
        collate = KindCollator({PAIRED: self.collate, IMAGE_ONLY: stack_samples})
        return self._loader(self.mixed_train, collate, batch_sampler=batch_sampler)
