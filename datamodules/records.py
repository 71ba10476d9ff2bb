"""The plain record a source yields: everything about one volume, no tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MaskSource:
    """One organ mask as stored on disk: the union of ``label_ids`` in the label-map NIfTI ``path``,
    which lies on the same voxel grid (shape and header) as the record's image."""

    path: Path
    label_ids: tuple[int, ...]


@dataclass
class Record:
    """One volume as a source reads it from a dataset's own files.

    ``split`` is the dataset's *official* split (``"train"`` or ``"test"``); the DataModule
    carves the internal validation set out of ``"train"`` by patient.
    ``spacing`` is (x, y, z) in mm as the dataset's metadata states it; ``None`` means the
    image header is trusted. Voxels become HU as ``raw * hu_slope + hu_intercept``.
    ``labels`` maps label name -> 1.0 / 0.0, with ``math.nan`` for unknown.
    ``masks`` maps organ name (``datamodules.totalseg.ORGANS``) -> where its mask is stored.
    ``ts_total``: the TotalSegmentator ``total`` label map on the image's grid, when the dataset has
    one (the fine organ tasks of ``datamodules.totalseg.TS_ORGAN_IDS`` are read from it).
    """

    id: str
    patient_id: str
    split: str
    image_path: Path
    spacing: tuple[float, float, float] | None = None
    hu_slope: float = 1.0
    hu_intercept: float = 0.0
    sections: dict[str, str] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)
    source: str = "ct_rate"
    masks: dict[str, MaskSource] = field(default_factory=dict)
    ts_total: Path | None = None

    def label_vector(self, names: list[str]) -> list[float]:
        return [float(self.labels.get(name, math.nan)) for name in names]
