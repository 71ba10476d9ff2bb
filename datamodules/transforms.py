"""Train-time crops, light intensity augmentation and small spatial augmentation on cached int16
HU volumes.

Augmentations are a few torch ops driven by an explicit per-sample ``numpy`` Generator
rather than torchio's random transforms, because torchio draws from the global torch RNG
and we need every sample to be a pure function of (seed, epoch, index) for exact resume. The
spatial one draws its parameters from that Generator and applies them with ``affine_grid`` /
``grid_sample`` (torchio's ``RandomAffine`` cannot be seeded per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HU_SCALE = 1000.0
# The HU range the cache stores (datamodules/preprocess.py clamps to it) and the default window:
# with it the model input is HU / 1000 clipped to [-1, 1] (COLIPRI), bit for bit.
CACHE_HU_RANGE = (-1000.0, 1000.0)

Size3 = tuple[int, int, int]


def as_size3(value: Any, name: str = "crop_size") -> Size3:
    """A crop size as (x, y, z) voxels: an int is a cube; a sequence must hold 3 positive ints."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        items = [value] * 3
    else:
        try:
            items = list(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or 3 ints [x, y, z], not {value!r}") from None
    if len(items) != 3 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(f"{name} must be a positive int or 3 positive ints [x, y, z], not {value!r}")
    return (int(items[0]), int(items[1]), int(items[2]))


def _per_axis(shape: Sequence[int], size: int | Sequence[int]) -> list[int]:
    sizes = [int(size)] * len(shape) if isinstance(size, int | np.integer) else [int(s) for s in size]
    if len(sizes) != len(shape):
        raise ValueError(f"crop size {size} does not match the volume's {len(shape)} axes")
    return sizes


def random_crop_start(
    shape: tuple[int, ...], size: int | Sequence[int], rng: np.random.Generator
) -> tuple[int, ...]:
    """Uniform crop start per axis (``size``: an edge, or one per axis); when the volume is smaller
    than the crop, it is placed at a random offset inside the (padded) crop."""
    starts = []
    for extent, edge in zip(shape, _per_axis(shape, size), strict=True):
        low, high = min(0, extent - edge), max(0, extent - edge)
        starts.append(int(rng.integers(low, high + 1)))
    return tuple(starts)


def centre_crop_start(shape: tuple[int, ...], size: int | Sequence[int]) -> tuple[int, ...]:
    return tuple((extent - edge) // 2 for extent, edge in zip(shape, _per_axis(shape, size), strict=True))


def crop_start(
    shape: tuple[int, ...],
    size: int | Sequence[int],
    field: Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[int, ...]:
    """Where a crop of ``size`` starts in a volume of ``shape``: random with ``rng`` (training),
    else centred (evaluation).

    ``field`` (``data.crop_field``): the centred region every volume is first padded (air) or
    cropped to; the crop is drawn inside it and the centre crop is its centre. ``None``: the whole
    volume, exactly as before the field existed (same draws from ``rng``)."""
    if field is None:
        return random_crop_start(shape, size, rng) if rng is not None else centre_crop_start(shape, size)
    field = tuple(int(f) for f in field)
    origin = centre_crop_start(shape, field)
    inner = random_crop_start(field, size, rng) if rng is not None else centre_crop_start(field, size)
    return tuple(o + i for o, i in zip(origin, inner, strict=True))


def hu_to_input(
    volume_hu: np.ndarray, window: tuple[float, float] | Sequence[float] = CACHE_HU_RANGE
) -> torch.Tensor:
    """int16 HU -> float32 model input with a channel axis: HU clipped to ``window`` = [lo, hi] and
    mapped linearly to [-1, 1], ``(clip(HU, lo, hi) - lo) / (hi - lo) * 2 - 1``.

    Computed as ``(HU - centre) / half-width`` clamped to [-1, 1] (the same map), so the default
    window [-1000, 1000] is exactly the former ``HU / 1000`` clipped to [-1, 1], bit for bit."""
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"HU window must have lo < hi, not {list(window)}")
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    tensor = torch.from_numpy(np.array(volume_hu, dtype=np.float32, order="C"))  # a fresh copy
    if centre != 0.0:
        tensor.sub_(centre)
    return tensor.mul_(1.0 / half).clamp_(-1.0, 1.0).unsqueeze(0)


@dataclass(frozen=True)
class IntensityAugmentation:
    """Random affine intensity change plus Gaussian noise, each applied with probability p."""

    scale: float
    shift: float
    noise_std: float
    p: float = 0.5

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.scale > 0 and rng.random() < self.p:
            image = image * float(rng.uniform(1 - self.scale, 1 + self.scale))
        if self.shift > 0 and rng.random() < self.p:
            image = image + float(rng.uniform(-self.shift, self.shift))
        if self.noise_std > 0 and rng.random() < self.p:
            # torch draws the noise (2-3x faster than numpy for a 160^3 crop), seeded from rng so
            # the sample stays a pure function of (seed, epoch, index).
            generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
            noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
            image = image + noise.mul_(self.noise_std)
        return image.clamp_(-1.0, 1.0)


AUGMENTATION_LEVELS: dict[str, IntensityAugmentation | None] = {
    "none": None,
    "low": IntensityAugmentation(scale=0.05, shift=0.05, noise_std=0.01),
    "high": IntensityAugmentation(scale=0.15, shift=0.1, noise_std=0.03),
}


# ------------------------------------------------------------------------------------ spatial
@dataclass(frozen=True)
class SpatialParams:
    """One sample's drawn spatial change: rotation about x, y, z (degrees, applied x then y then z,
    in mm so an anisotropic cache is not sheared), an isotropic zoom (> 1 magnifies) and mirrored
    axes. Identity when nothing was drawn."""

    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    zoom: float = 1.0
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def resamples(self) -> bool:
        """Whether the crop must be interpolated (a rotation or zoom), not only mirrored."""
        return any(a != 0.0 for a in self.angles_deg) or self.zoom != 1.0


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SpatialAugmentation:
    """Small random rotation, isotropic zoom and mirroring of a training crop (``data.spatial_augmentation``).

    The parameters are drawn from the sample's own ``numpy`` Generator (:meth:`draw`), so the
    result stays a pure function of (seed, epoch, index); applying them (:func:`spatial_read_box`,
    :func:`apply_spatial`) is deterministic. Rotation and zoom are one trilinear ``grid_sample`` of
    a box read around the crop large enough that no padding comes in except the volume's own air
    border; per-voxel targets (organ masks) use the same grid with nearest sampling."""

    rotation_deg: float  # each of the 3 angles uniform in [-rotation_deg, rotation_deg] ...
    p_rotation: float  # ... with this probability (one draw for the 3 angles)
    scale: float  # zoom uniform in [1 - scale, 1 + scale] ...
    p_scale: float  # ... with this probability
    flip_axes: tuple[int, ...] = ()  # axes (0 = x, 1 = y, 2 = z) that may be mirrored ...
    p_flip: float = 0.5  # ... each independently with this probability

    def draw(self, rng: np.random.Generator) -> SpatialParams:
        """The sample's parameters. A fixed number of draws per decision (a skipped rotation draws
        no angles), so one setting's stream is reproducible; ``none`` draws nothing at all."""
        angles = (0.0, 0.0, 0.0)
        if self.rotation_deg > 0 and rng.random() < self.p_rotation:
            drawn = rng.uniform(-self.rotation_deg, self.rotation_deg, 3)
            angles = (float(drawn[0]), float(drawn[1]), float(drawn[2]))
        zoom = 1.0
        if self.scale > 0 and rng.random() < self.p_scale:
            zoom = float(rng.uniform(1.0 - self.scale, 1.0 + self.scale))
        flips = [False, False, False]
        for axis in self.flip_axes:
            flips[axis] = bool(rng.random() < self.p_flip)
        return SpatialParams(angles, zoom, (flips[0], flips[1], flips[2]))


def _voxel_matrix(params: SpatialParams, spacing: Sequence[float]) -> np.ndarray:
    """Output voxel offset (from the crop centre) -> input voxel offset: mirror, rotate in mm, zoom."""
    s = np.diag(np.asarray(spacing, dtype=np.float64))
    mirror = np.diag([-1.0 if f else 1.0 for f in params.flips])
    return np.linalg.inv(s) @ _rotation(params.angles_deg) @ s @ mirror / params.zoom


def spatial_read_box(
    start: Sequence[int], size: Sequence[int], params: SpatialParams, spacing: Sequence[float] = (1, 1, 1)
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(start, size) of the box to read so the transformed crop only samples inside it: the crop's
    box grown by a whole-voxel margin per axis, with the same centre. The crop's own box when
    nothing is resampled (mirroring needs no margin)."""
    if not params.resamples:
        return (int(start[0]), int(start[1]), int(start[2])), (int(size[0]), int(size[1]), int(size[2]))
    half = (np.asarray(size, dtype=np.float64) - 1.0) / 2.0
    reach = np.abs(_voxel_matrix(params, spacing)) @ half  # the farthest input offset per axis
    margin = np.maximum(np.ceil(reach - half - 1e-6), 0).astype(int) + 1
    new_start = tuple(int(s - m) for s, m in zip(start, margin, strict=True))
    new_size = tuple(int(n + 2 * m) for n, m in zip(size, margin, strict=True))
    return new_start, new_size  # type: ignore[return-value]


def _affine_grid(theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta, (1, 1, *size), align_corners=True)`` for a (3, 3) ``theta`` without
    translation, as three broadcast outer products (~2x faster on CPU for a 160^3 crop)."""

    def axis(n: int, column: int) -> torch.Tensor:
        coords = torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)
        return coords[:, None] * theta[:, column]  # (n, 3): (z, y, x) grid components

    depth, height, width = (int(n) for n in size)
    planes = axis(depth, 2)[:, None, None, :] + axis(height, 1)[None, :, None, :]
    return (planes + axis(width, 0)[None, None, :, :])[None]


def apply_spatial(
    volume: torch.Tensor,
    size: Sequence[int],
    params: SpatialParams,
    spacing: Sequence[float] = (1, 1, 1),
    mode: str = "bilinear",
) -> torch.Tensor:
    """The transformed crop of ``size`` from ``volume`` (the :func:`spatial_read_box` read, shape
    (X, Y, Z) or (C, X, Y, Z)), centred. ``mode``: ``bilinear`` (trilinear: images) or ``nearest``
    (labels and masks; values are kept exactly). Mirroring alone is an exact ``torch.flip``."""
    size = tuple(int(n) for n in size)
    channels = volume.ndim == 4
    if not params.resamples:
        dims = [axis + int(channels) for axis, flip in enumerate(params.flips) if flip]
        return volume.flip(dims) if dims else volume
    batch = volume[None] if channels else volume[None, None]
    dtype = batch.dtype
    batch = batch if batch.is_floating_point() else batch.float()
    read = np.asarray(batch.shape[2:], dtype=np.float64)
    out = np.asarray(size, dtype=np.float64)
    # align_corners=True: normalised -1 / +1 are the first / last voxel centres of each box.
    theta_xyz = np.diag(2.0 / np.maximum(read - 1.0, 1.0)) @ _voxel_matrix(params, spacing)
    theta_xyz = theta_xyz @ np.diag(np.maximum(out - 1.0, 1.0) / 2.0)
    order = np.eye(3)[::-1]  # grid_sample's grid lists (z, y, x) for an (X, Y, Z) volume
    grid = _affine_grid(torch.from_numpy(order @ theta_xyz @ order).float(), size)
    sampled = F.grid_sample(batch, grid, mode=mode, padding_mode="border", align_corners=True)[0]
    if dtype != sampled.dtype:
        sampled = sampled.round_().to(dtype)
    return sampled if channels else sampled[0]


# The levels of ``data.spatial_augmentation``. COLIPRI (Tab. 3) only names them ("low spatial" in
# every final model, "high" hurts) and gives no values; the values are ours, scaled down from
# nnU-Net's (and so nnssl's) default spatial augmentation: rotation +-30 deg and zoom 0.7-1.4 each
# with p 0.2, mirroring of every axis with p 0.5. ``low``: +-5 deg about each axis, zoom +-5 %,
# each with p 0.5, no mirroring (ours: the reports name sides, "right lower lobe", so a mirrored
# volume contradicts its report). ``medium``: +-15 deg, zoom +-15 %, p 0.5, and nnU-Net's
# mirroring of x, y and z with p 0.5 each (an ablation level, not a recommended one).
SPATIAL_AUGMENTATION_LEVELS: dict[str, SpatialAugmentation | None] = {
    "none": None,
    "low": SpatialAugmentation(rotation_deg=5.0, p_rotation=0.5, scale=0.05, p_scale=0.5),
    "medium": SpatialAugmentation(
        rotation_deg=15.0, p_rotation=0.5, scale=0.15, p_scale=0.5, flip_axes=(0, 1, 2), p_flip=0.5
    ),
}
