"""Several sources in one DataModule: which sources a config names, their label spaces mapped onto
the primary's, one dataset over all of them, and a collator that keeps batches of one kind.

``data.sources`` lists ``{name, root, weight}``; empty means the shorthand ``data.source`` /
``data.root`` (one source, weight 1). The **first** source is the primary: its label names are the
common label space of every batch (other sources' labels are mapped onto it through
``datamodules.labels``; labels without a mapping are NaN = unknown) and its validation / test
splits are the ones evaluated. The other sources add their official ``train`` split to training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import Dataset

from datamodules.cache import CacheEntry, Spacing, as_spacing
from datamodules.labels import label_projection, project_labels
from datamodules.sources.registry import SourceSpec, get_source

# data.reconstructions: one per acquisition (COLIPRI, CT-CLIP) or every one (Uniferum).
ONE_RECONSTRUCTION = "one_per_acquisition"
ALL_RECONSTRUCTIONS = "all"


@dataclass(frozen=True)
class DataSource:
    """One configured source."""

    name: str
    root: str
    weight: float
    spec: SourceSpec
    # The source's cache spacing in mm (a number, or (x, y, z) for an anisotropic cache); None:
    # data.spacing.
    spacing: Spacing | None = None
    # A label table replacing the source's own labels (datamodules/label_tables.py); None: its own.
    labels: str | None = None
    # Every reconstruction of an acquisition (data.reconstructions: all; CT-RATE stores several),
    # instead of one; they are cached in a folder of their own (cache_name).
    all_reconstructions: bool = False

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def cache_name(self) -> str:
        return source_cache_name(self.name, self.all_reconstructions)


def source_cache_name(source: str, all_reconstructions: bool = False) -> str:
    """The cache folder of a source under ``data.cache_dir``: its name, or
    ``<name>_all_reconstructions`` for every reconstruction of each acquisition."""
    return f"{source}_all_reconstructions" if all_reconstructions else source


def data_sources(data: DictConfig) -> list[DataSource]:
    """The configured sources, primary first (``data.sources``, or the ``data.source`` shorthand)."""
    listed = list(data.get("sources") or [])
    every = str(data.get("reconstructions", ONE_RECONSTRUCTION)) == ALL_RECONSTRUCTIONS
    if not listed:
        labels = data.get("labels")
        spec = get_source(str(data.source))
        return [
            DataSource(
                str(data.source),
                str(data.root),
                1.0,
                spec,
                labels=str(labels) if labels else None,
                all_reconstructions=every and spec.has_reconstructions,
            )
        ]
    sources = []
    for item in listed:
        weight = float(item.get("weight", 1.0))
        if not weight > 0:
            raise ValueError(f"data.sources: weight of {item.name!r} must be positive, not {weight}")
        spacing = item.get("spacing")
        labels = item.get("labels")
        spec = get_source(str(item.name))
        sources.append(
            DataSource(
                str(item.name),
                str(item.root),
                weight,
                spec,
                _source_spacing(item.name, spacing),
                str(labels) if labels else None,
                all_reconstructions=every and spec.has_reconstructions,
            )
        )
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data.sources names a source twice: {names}")
    return sources


def _source_spacing(name: str, spacing: Any) -> Spacing | None:
    if spacing is None:
        return None
    try:
        return as_spacing(spacing)
    except ValueError as error:
        raise ValueError(f"data.sources: {name!r}: {error}") from None


def project_entries(
    entries: list[CacheEntry], source: str, source_labels: list[str], target: str, target_labels: list[str]
) -> list[CacheEntry]:
    """Entries with their labels moved into the target label space (NaN where no mapping exists)."""
    if source == target and source_labels == target_labels:
        return entries
    projection = label_projection(source, source_labels, target, target_labels)
    return [replace(e, labels=project_labels(e.labels, projection)) for e in entries]


class MixedDataset(Dataset):
    """The concatenation of one dataset per source, indexed ``(global_index, source_epoch)``."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][(int(index - self.offsets[part]), epoch)]


class KindCollator:
    """Collates a batch of one ``kind`` with that kind's collator (batches never mix kinds)."""

    def __init__(self, collators: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]]) -> None:
        self.collators = collators

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        kinds = {s["kind"] for s in samples}
        if len(kinds) != 1:
            raise ValueError(f"a batch mixes sample kinds {sorted(kinds)}; the sampler must not do that")
        return self.collators[kinds.pop()](samples)
