"""Train-time crops and light intensity augmentation on cached int16 HU volumes.

Augmentations are a few torch ops driven by an explicit per-sample ``numpy`` Generator
rather than torchio's random transforms, because torchio draws from the global torch RNG
and we need every sample to be a pure function of (seed, epoch, index) for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HU_SCALE = 1000.0


def random_crop_start(shape: tuple[int, ...], size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Uniform crop start per axis; when the volume is smaller than the crop, it is placed
    at a random offset inside the (padded) crop."""
    starts = []
    for extent in shape:
        low, high = min(0, extent - size), max(0, extent - size)
        starts.append(int(rng.integers(low, high + 1)))
    return tuple(starts)


def centre_crop_start(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    return tuple((extent - size) // 2 for extent in shape)


def hu_to_input(volume_hu: np.ndarray) -> torch.Tensor:
    """int16 HU -> float32 model input HU/1000 clipped to [-1, 1], with a channel axis."""
    tensor = torch.from_numpy(np.array(volume_hu, dtype=np.float32, order="C"))  # a fresh copy
    return tensor.mul_(1.0 / HU_SCALE).clamp_(-1.0, 1.0).unsqueeze(0)


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
