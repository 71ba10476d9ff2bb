"""Train-time crops and light intensity augmentation on cached int16 HU volumes.

Augmentations are a few torch ops driven by an explicit per-sample ``numpy`` Generator
rather than torchio's random transforms, because torchio draws from the global torch RNG
and we need every sample to be a pure function of (seed, epoch, index) for exact resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
