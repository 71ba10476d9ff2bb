"""The Uniferum preprocessing profile: body-centred, lung-limited crops resized to the model input.

Uniferum (Sec. 3.5 and its public configs) prepares every CT as follows:

1. HU clipped to +-1000, 1 mm isotropic (here: the ordinary cache at the source's ``spacing``, else
   ``data.spacing``, RAS+, with the organ masks beside it; see ``datamodules/preprocess.py``).
2. **Body centre**: the largest connected component of the soft-tissue window (-150 to 250 HU),
   filled by its convex hull on each axial slice; the hulls' centre of mass is the centre in x-y
   (:func:`body_centre`). A cached body mask is not used for this (the paper thresholds).
3. **z limited to the lungs**: slices more than 5 mm above / below the lungs (TotalSegmentator lung
   lobes) are discarded; the crop is centred on the lungs in z. Without a lung mask the body
   centroid is used and no slice is discarded.
4. Crop or pad (with air) to 416 x 336 x 256 mm (x, y, z) for training; random rotation +-15 deg
   and zoom +-10 % (each p 0.5); then the centre 384 x 320 x 256 mm is resized to the model input
   **256 x 160 x 128** voxels (1.5 x 2 x 2 mm). Evaluation takes the same centre region without
   augmentation. Gaussian noise (sigma 0.01) and an intensity offset (+-0.01) on the paper's [0, 1]
   scale, each p 0.5, follow.

Steps 2-3 depend only on the cached volume and masks, so they run once per cache and are stored
as ``uniferum_boxes.json`` in the cache folder (:func:`ensure_boxes`). Step 4 is one
``grid_sample`` per sample from a mmap crop read (:class:`UniferumView`), so rotation, zoom, centre
crop and resizing cost one interpolation together.

Intensities follow this repository's convention (the model input is HU / 1000 in [-1, 1], as in
every DataModule), an affine map of the paper's ``HU / 2000 + 0.5``; the noise and offset are
scaled to match (x2). Axes are the cache's (x, y, z) = (R, A, S), so the model input is
(B, 1, X, Y, Z).

The ``cpu_demo`` profile shrinks this to ``uniferum.input_shape = [64, 64, 32]`` at 6 mm (the same
fields of view: 6 x 5 x 8 mm voxels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.morphology import convex_hull_image

from datamodules.cache import (
    CacheEntry,
    CacheIndex,
    read_crop,
    read_mask_crop,
    read_ts_labels_crop,
    read_volume,
    write_json_atomic,
)
from datamodules.totalseg import ORGANS, SEGMENTATION_ORGANS, TS_ORGAN_IDS

log = logging.getLogger(__name__)

BOXES_NAME = "uniferum_boxes.json"
BOXES_VERSION = 2
# The soft-tissue channel whose largest component is the body (Sec. 3.5).
SOFT_TISSUE_HU = (-150.0, 250.0)
HU_SCALE = 1000.0


@dataclass(frozen=True)
class UniferumGeometry:
    """Sizes of the Uniferum preparation (defaults: the paper's)."""

    input_shape: tuple[int, int, int] = (256, 160, 128)  # model input voxels (x, y, z)
    field_mm: tuple[float, float, float] = (384.0, 320.0, 256.0)  # what the model sees
    train_field_mm: tuple[float, float, float] = (416.0, 336.0, 256.0)  # read for augmentation
    lung_margin_mm: float = 5.0
    rotation_deg: float = 15.0
    zoom: float = 0.1
    noise_std: float = 0.02  # paper: 0.01 on its [0, 1] scale
    intensity_offset: float = 0.02  # paper: 0.01 on its [0, 1] scale
    p: float = 0.5

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(f / n for f, n in zip(self.field_mm, self.input_shape, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class CropBox:
    """Per volume, in cache voxel coordinates: the crop centre and the z slices kept (lo, hi], or
    ``None`` to keep all."""

    centre: tuple[float, float, float]
    z_keep: tuple[int, int] | None


# ------------------------------------------------------------------------------------- crop boxes
def body_centre(volume_hu: np.ndarray) -> tuple[float, float, float] | None:
    """The centre of mass (x, y, z voxels) of the body as Uniferum finds it: the largest connected
    component of the soft-tissue window, filled by its convex hull on each axial slice (so the lungs
    and the air inside the chest count, and a table or an arm outside does not pull the centre).
    ``None`` when no voxel lies in the window."""
    low, high = SOFT_TISSUE_HU
    labels, count = ndimage.label((volume_hu >= low) & (volume_hu <= high))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    total = np.zeros(3, dtype=np.float64)
    voxels = 0
    for z in np.flatnonzero(body.any(axis=(0, 1))):
        hull = convex_hull_image(body[:, :, z])
        xs, ys = np.nonzero(hull)
        total += (xs.sum(), ys.sum(), float(z) * xs.size)
        voxels += xs.size
    return (total[0] / voxels, total[1] / voxels, total[2] / voxels)


def compute_box(entry: CacheEntry, spacing: float, lung_margin_mm: float = 5.0) -> CropBox:
    """Body centre in x-y, lung-limited z range (see the module docstring)."""
    found = body_centre(read_volume(entry))
    centre = list(found) if found is not None else [(s - 1) / 2.0 for s in entry.shape]
    z_keep = None
    if entry.masks and "lungs" in entry.masks:
        bits = np.load(entry.mask_file)
        lung_slices = np.flatnonzero(((bits >> ORGANS.index("lungs")) & 1).any(axis=(0, 1)))
        if lung_slices.size:
            margin = int(round(lung_margin_mm / spacing))
            lo, hi = int(lung_slices[0]) - margin, int(lung_slices[-1]) + margin
            z_keep = (lo, hi)
            centre[2] = (lo + hi) / 2.0
    return CropBox(centre=(centre[0], centre[1], centre[2]), z_keep=z_keep)


def _boxes_key(index: CacheIndex, lung_margin_mm: float) -> str:
    ids = "\n".join(f"{e.id}:{','.join(e.masks)}:{e.shape}" for e in index.entries)
    return hashlib.sha256(f"{BOXES_VERSION}|{lung_margin_mm}|{ids}".encode()).hexdigest()[:16]


def ensure_boxes(index: CacheIndex, lung_margin_mm: float = 5.0) -> dict[str, CropBox]:
    """The crop box of every entry, computed once and kept in ``<cache>/uniferum_boxes.json``."""
    path = index.root / BOXES_NAME
    key = _boxes_key(index, lung_margin_mm)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == key:
            return {
                i: CropBox(tuple(b["centre"]), tuple(b["z_keep"]) if b["z_keep"] else None)  # type: ignore[arg-type]
                for i, b in data["boxes"].items()
            }
    log.info("Computing Uniferum crop boxes for %d volumes in %s", len(index.entries), index.root)
    boxes = {e.id: compute_box(e, index.spacing, lung_margin_mm) for e in index.entries}
    write_json_atomic(path, {"key": key, "boxes": {i: asdict(b) for i, b in boxes.items()}})
    return boxes


# ------------------------------------------------------------------------------------- one sample
def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (radians)."""
    ax, ay, az = angles_rad
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class View:
    """One prepared sample: the image (1, X, Y, Z) in [-1, 1] and, when asked, the organ bit field
    and the TotalSegmentator class ids, (X, Y, Z) uint8 on the same grid (0 outside the kept region;
    ``None`` where the volume has none)."""

    image: torch.Tensor
    bits: torch.Tensor | None
    ts_labels: torch.Tensor | None = None

    def organ(self, name: str) -> torch.Tensor | None:
        """One organ (float 0/1, (X, Y, Z)), or ``None`` when this view lacks its mask."""
        if name in ORGANS:
            return None if self.bits is None else organ_mask(self.bits, name)
        if self.ts_labels is None:
            return None
        return torch.isin(self.ts_labels, torch.tensor(TS_ORGAN_IDS[name], dtype=torch.uint8)).float()


def organ_available(entry: CacheEntry, organ: str) -> bool:
    """Whether ``entry`` has a mask of ``organ`` (a bit-field organ it lists, or a TotalSegmentator
    organ with at least one of its classes present)."""
    if organ in ORGANS:
        return organ in entry.masks
    if organ not in TS_ORGAN_IDS:
        raise ValueError(f"unknown organ {organ!r}; known: {', '.join(SEGMENTATION_ORGANS)}")
    return not set(TS_ORGAN_IDS[organ]).isdisjoint(entry.ts_labels)


class UniferumView:
    """Reads one volume's crop and resamples it to the model input (module docstring, step 4)."""

    def __init__(self, geometry: UniferumGeometry, spacing: float) -> None:
        self.geometry = geometry
        if not isinstance(spacing, int | float):
            raise ValueError(f"Uniferum reads an isotropic cache, not one at {list(spacing)} mm (x, y, z)")
        self.spacing = float(spacing)

    def _read_size(self, field_mm: Sequence[float]) -> tuple[int, int, int]:
        return tuple(int(math.ceil(f / self.spacing)) for f in field_mm)  # type: ignore[return-value]

    def __call__(
        self,
        entry: CacheEntry,
        box: CropBox,
        rng: np.random.Generator | None = None,
        with_masks: bool = False,
    ) -> View:
        g = self.geometry
        augment = rng is not None
        size = self._read_size(g.train_field_mm if augment else g.field_mm)
        start = tuple(int(round(c - (n - 1) / 2.0)) for c, n in zip(box.centre, size, strict=True))
        # +1: air becomes 0, so grid_sample's zero padding pads with air.
        image = torch.from_numpy(read_crop(entry, start, size).astype(np.float32)) / HU_SCALE
        image = image.clamp_(-1.0, 1.0).add_(1.0)
        bits = labels = None
        if with_masks and entry.masks:
            bits = torch.from_numpy(read_mask_crop(entry, start, size).astype(np.float32))
        if with_masks and entry.ts_labels:
            labels = torch.from_numpy(read_ts_labels_crop(entry, start, size).astype(np.float32))
        if box.z_keep is not None:  # slices beyond the lungs +- margin are discarded (air)
            lo, hi = box.z_keep[0] - start[2], box.z_keep[1] - start[2]
            for volume in (image, bits, labels):
                if volume is not None:
                    volume[:, :, : max(lo, 0)] = 0.0
                    volume[:, :, max(hi + 1, 0) :] = 0.0
        rotation, zoom = np.eye(3), 1.0
        if augment:
            if rng.random() < g.p:
                rotation = rotation_matrix(np.deg2rad(rng.uniform(-g.rotation_deg, g.rotation_deg, 3)))
            if rng.random() < g.p:
                zoom = float(rng.uniform(1.0 - g.zoom, 1.0 + g.zoom))
        read_mm = np.array(size, dtype=np.float64) * self.spacing
        # Output normalised coords -> mm (the centre field) -> rotate / zoom -> input normalised coords.
        theta = np.diag(2.0 / read_mm) @ rotation @ np.diag(np.array(g.field_mm) / 2.0 / zoom)
        flip = np.eye(3)[::-1]  # grid_sample's grid is (W, H, D) = (z, y, x) ordered
        theta_t = torch.zeros(1, 3, 4)
        theta_t[0, :, :3] = torch.from_numpy(flip @ theta @ flip)
        out_size = (1, 1, *g.input_shape)
        grid = F.affine_grid(theta_t, list(out_size), align_corners=False)
        sampled = F.grid_sample(image[None, None], grid, mode="bilinear", align_corners=False)[0]
        image = sampled.sub_(1.0)
        masks = [None if m is None else _warp_labels(m, grid) for m in (bits, labels)]
        if augment:
            if rng.random() < g.p:
                noise = rng.standard_normal(image.shape, dtype=np.float32)
                image = image + g.noise_std * torch.from_numpy(noise)
            if rng.random() < g.p:
                image = image + float(rng.uniform(-g.intensity_offset, g.intensity_offset))
        return View(image=image.clamp_(-1.0, 1.0), bits=masks[0], ts_labels=masks[1])


def _warp_labels(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """A label volume (bit field or class ids, as float) through the view's grid, nearest neighbour."""
    out = F.grid_sample(volume[None, None], grid, mode="nearest", align_corners=False)[0, 0]
    return out.round_().to(torch.uint8)


def organ_mask(bits: torch.Tensor, organ: str) -> torch.Tensor:
    """One organ (float 0/1) out of a bit field."""
    return ((bits.long() >> ORGANS.index(organ)) & 1).float()
