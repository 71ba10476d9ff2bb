"""Organ bit fields -> one class per voxel, the target of GreenRFM's coarse anatomical segmentation.

The cache stores organ masks as bit fields (bit i = ``totalseg.ORGANS[i]``; organs may overlap:
the body contains the others). A cross-entropy target needs one class per voxel, so the classes are
``0`` = outside the body, then one per organ in ``ORGANS`` order, a later organ winning where they
overlap (``body`` is the soft tissue left once lungs, heart, aorta and spine are assigned).
``UNKNOWN_CLASS`` marks a crop whose volume lacks some organ's mask: it has no target at all,
because a missing organ would otherwise be learned as plain body.
"""

from __future__ import annotations

import numpy as np

from datamodules.totalseg import ORGANS

BACKGROUND_CLASS = 0
UNKNOWN_CLASS = 255
ORGAN_CLASS_NAMES: tuple[str, ...] = ("background", *ORGANS)
NUM_ORGAN_CLASSES = len(ORGAN_CLASS_NAMES)


def organ_class_map(bits: np.ndarray) -> np.ndarray:
    """A uint8 bit-field crop (X, Y, Z) -> uint8 class indices (0 background, i + 1 = ORGANS[i])."""
    classes = np.zeros(bits.shape, dtype=np.uint8)
    for i in range(len(ORGANS)):
        classes[(bits >> i) & 1 == 1] = i + 1
    return classes


def unknown_class_map(shape: tuple[int, ...]) -> np.ndarray:
    """The target of a crop without (complete) organ masks: every voxel ``UNKNOWN_CLASS``."""
    return np.full(shape, UNKNOWN_CLASS, dtype=np.uint8)


def has_every_organ(masks: list[str]) -> bool:
    """Whether an entry's organ list covers every class (only then is its class map a target)."""
    return set(ORGANS) <= set(masks)
