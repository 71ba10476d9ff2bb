"""The supported on-disk layouts: name -> scanner, native label space, sample kind, root check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datamodules.batching import IMAGE_ONLY, PAIRED
from datamodules.labels import SOURCE_LABELS
from datamodules.sources import ct_rate, image_only, inspect, merlin, msd, rad_chestct
from datamodules.sources.ct_rate import SourceScan


@dataclass(frozen=True)
class SourceSpec:
    name: str
    # (root, label names) -> records; sources that store several reconstructions of one acquisition
    # also take ``all_reconstructions`` (``has_reconstructions``).
    scan: Callable[..., SourceScan]
    label_names: list[str]
    # The kind of its batches: PAIRED (volume + report) or IMAGE_ONLY (no report: MAE / vision-only
    # batches, or labels only)
    kind: str
    resolve_root: Callable[[Path], Path]
    has_reconstructions: bool = False

    def scan_records(
        self, root: Path, label_names: list[str], all_reconstructions: bool = False
    ) -> SourceScan:
        """The source's records under ``root``; ``all_reconstructions``: every reconstruction of
        each acquisition (a ``ValueError`` for a source that stores one)."""
        if not all_reconstructions:
            return self.scan(root, label_names)
        if not self.has_reconstructions:
            raise ValueError(
                f"{self.name} stores one reconstruction per acquisition (only ct_rate has several)"
            )
        return self.scan(root, label_names, all_reconstructions=True)


SOURCES: dict[str, SourceSpec] = {
    "ct_rate": SourceSpec(
        "ct_rate",
        ct_rate.scan_ct_rate,
        SOURCE_LABELS["ct_rate"],
        PAIRED,
        ct_rate.resolve_root,
        has_reconstructions=True,
    ),
    "merlin": SourceSpec("merlin", merlin.scan_merlin, SOURCE_LABELS["merlin"], PAIRED, merlin.resolve_root),
    "rad_chestct": SourceSpec(
        "rad_chestct",
        rad_chestct.scan_rad_chestct,
        SOURCE_LABELS["rad_chestct"],
        IMAGE_ONLY,  # the public subset has labels but no reports
        rad_chestct.resolve_root,
    ),
    # CT pulmonary angiograms with their report impressions; PE diagnosis and outcome labels
    "inspect": SourceSpec(
        "inspect", inspect.scan_inspect, SOURCE_LABELS["inspect"], PAIRED, inspect.resolve_root
    ),
    "image_only": SourceSpec(
        "image_only",
        lambda root, labels: image_only.scan_image_only(root, labels),
        SOURCE_LABELS["image_only"],
        IMAGE_ONLY,
        image_only.resolve_root,
    ),
    # Segmentation (nnU-Net raw / MSD layout): no classification labels; label maps and the CT
    # normalisation come from datamodules.sources.msd.finish_msd_cache
    "msd": SourceSpec("msd", msd.scan_msd, [], IMAGE_ONLY, msd.resolve_root),
}


def get_source(name: str) -> SourceSpec:
    if name not in SOURCES:
        raise ValueError(f"Unknown data source {name!r}; available: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]
