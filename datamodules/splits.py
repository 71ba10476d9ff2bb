"""Patient-level splits: the internal validation set is carved out of the official train split."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class HasPatientSplit(Protocol):
    patient_id: str
    split: str


def _with_val_patients(
    entries: Sequence[HasPatientSplit], val_patients: set[str]
) -> dict[str, list[HasPatientSplit]]:
    """The official test split as ``test``; the official train split's ``val_patients`` as ``val``,
    the rest as ``train``."""
    splits: dict[str, list[HasPatientSplit]] = {"train": [], "val": [], "test": []}
    for entry in entries:
        if entry.split == "test":
            splits["test"].append(entry)
        elif entry.split == "train":
            splits["val" if entry.patient_id in val_patients else "train"].append(entry)
        else:
            raise ValueError(f"Unknown official split '{entry.split}' for patient {entry.patient_id}")
    return splits


def assign_splits(
    entries: Sequence[HasPatientSplit], val_patients: int, seed: int = 0
) -> dict[str, list[HasPatientSplit]]:
    """Return ``{"train", "val", "test"}`` lists. ``test`` is the official test split;
    ``val`` holds every volume of ``val_patients`` patients drawn (seeded) from official train,
    so no patient is ever on both sides. A dataset with an official validation split (entries
    with split ``"val"``, e.g. Merlin, RAD-ChestCT) keeps it, and ``val_patients`` is not used."""
    if any(e.split == "val" for e in entries):
        official: dict[str, list[HasPatientSplit]] = {"train": [], "val": [], "test": []}
        for entry in entries:
            if entry.split not in official:
                raise ValueError(f"Unknown official split '{entry.split}' for patient {entry.patient_id}")
            official[entry.split].append(entry)
        log.info("Splits (official train/val/test): %s", {k: len(v) for k, v in official.items()})
        return official
    train_patients = sorted({e.patient_id for e in entries if e.split == "train"})
    if val_patients >= len(train_patients):
        raise ValueError(
            f"data.val_patients={val_patients} leaves no training patients "
            f"(the official train split has {len(train_patients)}); lower data.val_patients"
        )
    chosen = set(random.Random(seed).sample(train_patients, val_patients))
    splits = _with_val_patients(entries, chosen)
    log.info("Splits: %s", {k: len(v) for k, v in splits.items()})
    return splits


def fold_splits(
    entries: Sequence[HasPatientSplit], fold: int, n_folds: int = 5, seed: int = 0
) -> dict[str, list[HasPatientSplit]]:
    """K-fold cross-validation by patient (nnU-Net style, e.g. for segmentation fine-tuning): the
    patients of the official train split, sorted, then shuffled with ``random.Random(seed)``, are cut
    into ``n_folds`` contiguous folds whose sizes differ by at most one (the first ``len % n_folds``
    are one larger, as scikit-learn's ``KFold``). Returns ``{"train", "val", "test"}``: ``val`` is
    fold ``fold`` (0-based), ``train`` the other folds, ``test`` the official test split. The same
    entries, ``n_folds`` and ``seed`` always give the same folds; over all folds every patient is in
    ``val`` exactly once."""
    if not 0 <= fold < n_folds:
        raise ValueError(
            f"data.fold={fold} must be in [0, {n_folds - 1}] for {n_folds}-fold cross-validation"
        )
    patients = sorted({e.patient_id for e in entries if e.split == "train"})
    if len(patients) < n_folds:
        raise ValueError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} training patients, "
            f"the official train split has {len(patients)}"
        )
    random.Random(seed).shuffle(patients)
    size, extra = divmod(len(patients), n_folds)
    start = fold * size + min(fold, extra)
    held_out = set(patients[start : start + size + (fold < extra)])
    splits = _with_val_patients(entries, held_out)
    log.info("Fold %d of %d: %s", fold, n_folds, {k: len(v) for k, v in splits.items()})
    return splits
