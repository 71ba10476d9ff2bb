"""Segmentation datasets in the nnU-Net raw / Medical Segmentation Decathlon layout -> records, and
their segmentation cache (label maps and CT intensity statistics beside the common volume cache).

Layout under the data root (an nnU-Net v2 ``nnUNet_raw/DatasetXXX_Name`` folder; an MSD
``TaskXX_Name`` once renamed to nnU-Net's channel suffixes, e.g. by ``nnUNetv2_convert_MSD_dataset``)::

    dataset.json                  "channel_names": exactly one channel, CT ({"0": "CT"}; MSD v1's
                                  "modality" is read the same way); "labels": name -> int (nnU-Net
                                  v2; MSD v1's "0": "background" is accepted); "file_ending"
                                  (default ".nii.gz")
    imagesTr/<case>_0000.nii.gz   the CT of one case (header geometry and scaling trusted)
    labelsTr/<case>.nii.gz        its label map: integers of dataset.json's labels, on the image grid
    imagesTs/                     not read (no labels)

Every case is one record in the ``train`` split, its own patient (``patient_id`` = case id); the
folds of :func:`datamodules.splits.fold_splits` (``data.fold``) split them. The scan quarantines
(``quarantine.csv``, with the reason) an image without a label map or with a second channel, a label
map without an image, a label map whose grid (shape, or affine beyond ``GRID_ATOL_MM``) is not its
image's, and a label map with a value that dataset.json does not name. The value check reads every
label map once per scan (a scan runs only when the cache is built or the dataset changed).

The cache (``<cache_dir>/msd/<spacing>mm-<interpolation>``, default spacing ``DEFAULT_SPACING`` =
1 mm isotropic as COLIPRI) is the common one of ``datamodules.cache`` (``volumes/<id>.npy``: int16
HU clipped to [-1000, 1000], RAS+), plus what :func:`finish_msd_cache` adds::

    labels/<id>.npy          uint8 label map on the volume's grid: the label map with the image's
                             header affine, RAS+, nearest-neighbour resampled to the cache spacing
                             (``datamodules.mask_preprocess.resample_label_map``)
    segmentation.json        written last: dataset.json's labels, the CT normalisation statistics,
                             and per case the image / label files it was built from and its voxel
                             count per label

The normalisation is nnU-Net's ``CTNormalization``, applied at load time (the cache keeps HU, like
every other source's): clip to the 0.5 / 99.5 percentiles of the foreground intensities, subtract
their mean, divide by their standard deviation. The statistics are dataset-level, from every cached
(training) case as nnU-Net's fingerprint does (so, as in nnU-Net, not per fold): up to
``SAMPLES_PER_CASE`` voxels with label > 0 per case, drawn uniformly without replacement with
``numpy.random.default_rng([seed, crc32(case id)])``, pooled; mean and (population) std and the
percentiles of the pool. They are taken from the cached volumes, i.e. after resampling and the
cache's [-1000, 1000] HU clip (foreground tissue lies well inside it).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from datamodules.cache import (
    MASK_DTYPE,
    CacheEntry,
    CacheIndex,
    Spacing,
    _padded_crop,
    as_spacing,
    cache_path,
    npy_shape,
    read_crop,
    read_volume,
    write_json_atomic,
)
from datamodules.cache_provenance import reusable_index
from datamodules.cache_shards import quarantine_text, write_text_atomic
from datamodules.errors import DataRootError
from datamodules.mask_preprocess import resample_label_map
from datamodules.preprocess import build_cache, read_quarantine, save_npy_atomic
from datamodules.records import Record
from datamodules.sources.common import Rejected
from datamodules.sources.ct_rate import SourceScan

log = logging.getLogger(__name__)

SOURCE = "msd"
DEFAULT_SPACING = 1.0
SAMPLES_PER_CASE = 10_000
GRID_ATOL_MM = 1e-3  # largest difference of a label map's affine from its image's (mm)
IMAGES_DIR, LABELS_DIR, DATASET_JSON = "imagesTr", "labelsTr", "dataset.json"
CHANNEL = "_0000"
CACHE_LABELS_DIR = "labels"
SEGMENTATION_JSON = "segmentation.json"
_FORMAT = 1

EXPECTED_LAYOUT = """\
Expected the nnU-Net raw / Medical Segmentation Decathlon layout under the data root:
  dataset.json                  {"channel_names": {"0": "CT"}, "labels": {"background": 0, ...}, ...}
  imagesTr/<case>_0000.nii.gz   one CT channel per case
  labelsTr/<case>.nii.gz        its label map
Run `ctvlp phantom --source msd_liver --out DIR` for a phantom dataset in this layout."""


# ------------------------------------------------------------------------------------ dataset.json


@dataclass(frozen=True)
class MsdDataset:
    """What dataset.json says: label name -> value (background 0 first), and the file ending."""

    labels: dict[str, int]
    file_ending: str = ".nii.gz"
    name: str = ""

    @property
    def values(self) -> set[int]:
        return set(self.labels.values())


def read_dataset_json(root: Path | str) -> MsdDataset:
    """Parse and check ``dataset.json``; any problem is a :class:`DataRootError`."""
    path = Path(root) / DATASET_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataRootError(f"cannot read {path}: {error}\n{EXPECTED_LAYOUT}") from error
    if not isinstance(data, dict):
        raise DataRootError(f"{path} is not a JSON object\n{EXPECTED_LAYOUT}")
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise DataRootError(
            f"{path}: channel_names must name exactly one channel, CT ({{'0': 'CT'}}), not {channels!r}; "
            "multi-channel or non-CT datasets are not supported"
        )
    ((key, modality),) = channels.items()
    if str(key) != "0" or str(modality).strip().upper() != "CT":
        raise DataRootError(f"{path}: channel_names must be {{'0': 'CT'}}, not {channels!r}")
    labels = _parse_labels(data.get("labels"), path)
    ending = str(data.get("file_ending", ".nii.gz"))
    if ending not in (".nii.gz", ".nii"):
        raise DataRootError(f"{path}: file_ending {ending!r} is not supported (.nii.gz or .nii)")
    return MsdDataset(labels=labels, file_ending=ending, name=str(data.get("name", "")))


def _parse_labels(raw: Any, path: Path) -> dict[str, int]:
    """nnU-Net v2 ``{"background": 0, "liver": 1}`` or MSD v1 ``{"0": "background", "1": "liver"}``
    -> name -> int, sorted by value. Region-based labels (lists of values) are not supported."""
    if not isinstance(raw, dict) or not raw:
        raise DataRootError(f"{path}: 'labels' must be a non-empty object, not {raw!r}")
    v1 = all(str(k).strip().lstrip("-").isdigit() for k in raw) and all(
        isinstance(v, str) for v in raw.values()
    )
    pairs = [(str(v), k) for k, v in raw.items()] if v1 else list(raw.items())
    labels: dict[str, int] = {}
    for name, value in pairs:
        number = _integer(value)
        if number is None:
            raise DataRootError(
                f"{path}: label {name!r} has value {value!r}; each label must be one integer "
                "(region-based label lists are not supported)"
            )
        if not 0 <= number <= np.iinfo(MASK_DTYPE).max:
            raise DataRootError(f"{path}: label {name!r} = {number} is outside [0, 255]")
        labels[str(name)] = number
    if len(set(labels.values())) != len(labels):
        raise DataRootError(f"{path}: two labels share a value: {labels}")
    if 0 not in labels.values():
        raise DataRootError(f"{path}: no label has value 0 (background): {labels}")
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _integer(value: Any) -> int | None:
    """An int, an integral float or a string of digits as an int; anything else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip() if isinstance(value, str) else ""
    return int(text) if text.lstrip("-").isdigit() else None


def resolve_root(root: Path | str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(f"MSD data root {root} does not exist or is not a folder.\n{EXPECTED_LAYOUT}")
    for name in (IMAGES_DIR, LABELS_DIR):
        if not (root / name).is_dir():
            raise DataRootError(f"MSD data root {root} has no {name}/ folder.\n{EXPECTED_LAYOUT}")
    read_dataset_json(root)
    return root


def label_path(root: Path | str, case: str, dataset: MsdDataset) -> Path:
    return Path(root) / LABELS_DIR / f"{case}{dataset.file_ending}"


# ------------------------------------------------------------------------------------------- scan


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    image = nib.load(path)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape, np.asarray(image.affine, dtype=np.float64)


def label_problem(image: Path, label: Path, dataset: MsdDataset) -> str | None:
    """Why the label map ``label`` of ``image`` cannot be used (``None``: it can): unreadable, a grid
    other than the image's, or values dataset.json does not name."""
    try:
        image_shape, image_affine = _header(image)
    except Exception as error:
        return f"unreadable image header: {type(error).__name__}: {error}"
    if len(image_shape) != 3:
        return f"image is not 3D: shape {image_shape} (one CT channel per file, as dataset.json says)"
    try:
        shape, affine = _header(label)
    except Exception as error:
        return f"unreadable label header: {type(error).__name__}: {error}"
    if shape != image_shape:
        return f"label grid differs from its image: shape {shape} vs image {image_shape}"
    if not np.allclose(affine, image_affine, rtol=0.0, atol=GRID_ATOL_MM):
        worst = float(np.abs(affine - image_affine).max())
        return (
            f"label grid differs from its image: affine differs by up to {worst:.4g} mm "
            f"(tolerance {GRID_ATOL_MM:g})"
        )
    try:
        data = _label_data(label)
    except Exception as error:
        return f"unreadable label data: {type(error).__name__}: {error}"
    if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
        return "label map has non-integer values"
    unknown = sorted(set(np.unique(data).tolist()) - dataset.values)
    if unknown:
        shown = ", ".join(f"{v:g}" for v in unknown[:10])
        return f"label values {{{shown}}} not in dataset.json labels {dataset.labels}"
    return None


def _label_data(path: Path) -> np.ndarray:
    image = nib.load(path)
    proxy = image.dataobj
    data = np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"not 3D: shape {data.shape}")
    return data


def scan_msd(root: Path, label_names: list[str] | None = None) -> SourceScan:
    """Scan an nnU-Net raw / MSD dataset: one ``train`` record per case whose label map is usable.
    ``label_names`` (classification labels) are not used: the source has none."""
    root = resolve_root(root)
    dataset = read_dataset_json(root)
    ending = dataset.file_ending
    images: dict[str, Path] = {}
    rejected: list[Rejected] = []
    for path in sorted((root / IMAGES_DIR).iterdir()):
        name = path.name
        if name.startswith(".") or not name.endswith(ending) or not path.is_file():
            continue
        stem = name[: -len(ending)]
        case, _, channel = stem.rpartition("_")
        if not case or len(channel) != 4 or not channel.isdigit():
            rejected.append((stem, str(path), f"image name is not <case>{CHANNEL}{ending} (nnU-Net naming)"))
        elif channel != CHANNEL[1:]:
            rejected.append((stem, str(path), f"channel {channel}: dataset.json has one channel (0000, CT)"))
        else:
            images[case] = path
    labels = {
        p.name[: -len(ending)]: p
        for p in sorted((root / LABELS_DIR).iterdir())
        if p.name.endswith(ending) and not p.name.startswith(".") and p.is_file()
    }
    for case in sorted(set(labels) - set(images)):
        rejected.append(
            (case, str(labels[case]), f"label map without an image {IMAGES_DIR}/{case}{CHANNEL}{ending}")
        )
    records: list[Record] = []
    for case, image in sorted(images.items()):
        if case not in labels:
            rejected.append((case, str(image), f"no label map {LABELS_DIR}/{case}{ending}"))
            continue
        problem = label_problem(image, labels[case], dataset)
        if problem is not None:
            rejected.append((case, str(labels[case]), problem))
            continue
        records.append(Record(id=case, patient_id=case, split="train", image_path=image, source=SOURCE))
    log.info(
        "MSD %s: %d cases, %d rejected (root %s)",
        dataset.name or root.name,
        len(records),
        len(rejected),
        root,
    )
    return SourceScan(records=records, rejected=rejected)


# ----------------------------------------------------------------------------- segmentation cache


@dataclass(frozen=True)
class IntensityStats:
    """nnU-Net's CT normalisation: clip to [lower, upper], then (x - mean) / std."""

    mean: float
    std: float
    lower: float  # 0.5 percentile of the sampled foreground intensities (HU)
    upper: float  # 99.5 percentile

    def normalise(self, hu: np.ndarray | torch.Tensor) -> torch.Tensor:
        """HU -> a float32 tensor, clipped and standardised."""
        x = torch.as_tensor(np.asarray(hu) if not isinstance(hu, torch.Tensor) else hu).float()
        return (x.clamp(self.lower, self.upper) - self.mean) / max(self.std, 1e-8)


def foreground_sample(
    volume: np.ndarray, labels: np.ndarray, case: str, seed: int = 0, n: int = SAMPLES_PER_CASE
) -> np.ndarray:
    """Up to ``n`` intensities of voxels with label > 0, drawn uniformly without replacement with
    ``default_rng([seed, crc32(case)])`` (all of them when there are fewer), as float64."""
    values = volume[labels > 0]
    if values.size > n:
        rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
        values = values[np.sort(rng.choice(values.size, size=n, replace=False))]
    return values.astype(np.float64)


def intensity_stats(samples: np.ndarray) -> IntensityStats:
    if samples.size == 0:
        raise ValueError("no foreground voxels (label > 0) in any cached case: cannot normalise")
    lower, upper = np.percentile(samples, [0.5, 99.5])
    return IntensityStats(float(samples.mean()), float(samples.std()), float(lower), float(upper))


def _stamp(path: Path) -> list[Any]:
    try:
        stat = Path(path).stat()
    except OSError:
        return [str(Path(path).absolute()), None]
    return [str(Path(path).absolute()), [stat.st_size, stat.st_mtime_ns]]


def cache_label_file(cache_root: Path, case: str) -> Path:
    return Path(cache_root) / CACHE_LABELS_DIR / f"{case}.npy"


def resample_case_labels(image: Path, label: Path, spacing: Spacing) -> np.ndarray:
    """The label map on the cached grid of ``image``: the image's header affine (the scan checked the
    label's is the same), RAS+, nearest neighbour to ``spacing`` mm."""
    affine = np.asarray(nib.load(image).affine, dtype=np.float64)
    return resample_label_map(np.rint(_label_data(label)).astype(MASK_DTYPE), affine, spacing)


def finish_msd_cache(
    cache_root: Path, root: Path, seed: int = 0, samples_per_case: int = SAMPLES_PER_CASE
) -> MsdCache:
    """Add the label maps and the normalisation statistics to the finished volume cache of the MSD
    dataset at ``root``. Resumable: a label map whose image and label files are unchanged is kept,
    and the statistics are recomputed only when the cases or their files changed. A case whose label
    map does not land on its volume's grid leaves the index for ``quarantine.csv``."""
    cache_root = Path(cache_root).absolute()
    dataset = read_dataset_json(root)
    index = CacheIndex.load(cache_root)
    previous = _read_json(cache_root / SEGMENTATION_JSON)
    old_cases = previous.get("cases", {}) if previous.get("format") == _FORMAT else {}
    spacing = as_spacing(index.spacing)
    cases: dict[str, dict[str, Any]] = {}
    failed: list[tuple[str, str, str]] = []
    for entry in index.entries:
        image = _image_path(root, entry.id, dataset)
        label = label_path(root, entry.id, dataset)
        files = {"image": _stamp(image), "label": _stamp(label)}
        target = cache_label_file(cache_root, entry.id)
        old = old_cases.get(entry.id, {})
        if old.get("files") == files and npy_shape(target, MASK_DTYPE) == entry.shape:
            cases[entry.id] = old
            continue
        try:
            labels = resample_case_labels(image, label, spacing)
        except Exception as error:
            failed.append(
                (entry.id, str(label), f"label map not convertible: {type(error).__name__}: {error}")
            )
            continue
        if labels.shape != entry.shape:
            failed.append(
                (
                    entry.id,
                    str(label),
                    f"label grid {labels.shape} differs from the cached image grid {entry.shape}",
                )
            )
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        save_npy_atomic(labels, target, MASK_DTYPE)
        counts = np.bincount(labels.ravel(), minlength=1)
        voxels = {str(v): int(counts[v]) for v in sorted(dataset.values) if v < counts.size and counts[v]}
        cases[entry.id] = {"files": files, "voxels": voxels}
    if failed:
        for case, path, reason in failed:
            log.warning("quarantined %s (%s): %s", case, path, reason)
        dropped = {case for case, _, _ in failed}
        index.entries = [e for e in index.entries if e.id not in dropped]
        rows = [*read_quarantine(cache_root), *failed]
        write_text_atomic(cache_root / "quarantine.csv", quarantine_text(rows))
        index.save()
    params = {"seed": seed, "samples_per_case": samples_per_case, "labels": dataset.labels}
    if previous.get("cases") == cases and previous.get("sampling") == params and "normalisation" in previous:
        return MsdCache.load(cache_root)
    pool = [
        foreground_sample(
            read_volume(e), np.load(cache_label_file(cache_root, e.id)), e.id, seed, samples_per_case
        )
        for e in index.entries
        if e.split == "train"
    ]
    stats = intensity_stats(np.concatenate(pool) if pool else np.zeros(0))
    write_json_atomic(
        cache_root / SEGMENTATION_JSON,
        {
            "format": _FORMAT,
            "name": dataset.name,
            "labels": dataset.labels,
            "normalisation": {
                "scheme": "nnU-Net CTNormalization: clip(HU, lower, upper), then (HU - mean) / std",
                "mean": stats.mean,
                "std": stats.std,
                "lower": stats.lower,
                "upper": stats.upper,
                "foreground_voxels_sampled": int(sum(p.size for p in pool)),
                "cases": len(pool),
            },
            "sampling": params,
            "cases": cases,
        },
    )
    log.info("MSD cache %s: %d cases, normalisation %s", cache_root, len(cases), stats)
    return MsdCache.load(cache_root)


def _image_path(root: Path, case: str, dataset: MsdDataset) -> Path:
    return Path(root) / IMAGES_DIR / f"{case}{CHANNEL}{dataset.file_ending}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def build_msd_cache(
    root: Path,
    cache_dir: Path,
    spacing: Spacing = DEFAULT_SPACING,
    interpolation: str = "paper",
    workers: int = 2,
    progress: bool = True,
    seed: int = 0,
    samples_per_case: int = SAMPLES_PER_CASE,
) -> MsdCache:
    """Scan, build (or reuse) the volume cache at ``<cache_dir>/msd/<spacing>mm-<interpolation>``
    with the common builder, then :func:`finish_msd_cache`."""
    root = Path(root)
    cache_root = cache_path(Path(cache_dir), SOURCE, spacing, interpolation)
    if reusable_index(cache_root, root) is None:
        scan = scan_msd(root)
        build_cache(
            scan.records,
            cache_root,
            spacing=spacing,
            interpolation=interpolation,
            label_names=[],
            workers=workers,
            progress=progress,
            rejected=scan.rejected,
            source_root=root,
        )
    return finish_msd_cache(cache_root, root, seed=seed, samples_per_case=samples_per_case)


def ensure_msd_cache(data: Any, progress: bool = True) -> MsdCache:
    """:func:`build_msd_cache` for a data config: its ``msd`` entry of ``data.sources`` (root,
    spacing) or the ``data.source: msd`` shorthand (``data.root``, ``data.spacing``)."""
    listed = [s for s in (data.get("sources") or []) if str(s.name) == SOURCE]
    if listed:
        root, spacing = listed[0].root, listed[0].get("spacing") or data.spacing
    elif str(data.source) == SOURCE:
        root, spacing = data.root, data.spacing
    else:
        raise ValueError("the data config names no msd source (data.source: msd, or a data.sources entry)")
    return build_msd_cache(
        Path(str(root)),
        Path(str(data.cache_dir)),
        as_spacing(spacing),
        str(data.interpolation),
        int(data.preprocess_workers),
        progress,
    )


@dataclass
class MsdCache:
    """A finished MSD cache: the common index, dataset.json's labels and the normalisation."""

    index: CacheIndex
    labels: dict[str, int]
    stats: IntensityStats

    @classmethod
    def load(cls, cache_root: Path) -> MsdCache:
        index = CacheIndex.load(cache_root)
        data = _read_json(index.root / SEGMENTATION_JSON)
        if data.get("format") != _FORMAT or "normalisation" not in data:
            raise FileNotFoundError(
                f"{index.root} has no finished {SEGMENTATION_JSON}: build it with build_msd_cache / "
                "ensure_msd_cache (the volume cache alone has no label maps)"
            )
        norm = data["normalisation"]
        stats = IntensityStats(
            float(norm["mean"]), float(norm["std"]), float(norm["lower"]), float(norm["upper"])
        )
        return cls(index=index, labels={str(k): int(v) for k, v in data["labels"].items()}, stats=stats)

    @property
    def root(self) -> Path:
        return self.index.root

    def entry(self, case: str) -> CacheEntry:
        for e in self.index.entries:
            if e.id == case:
                return e
        raise KeyError(f"case {case!r} is not in the MSD cache {self.root}")

    def label_file(self, entry: CacheEntry | str) -> Path:
        return cache_label_file(self.root, entry if isinstance(entry, str) else entry.id)

    def load_case(self, case: CacheEntry | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, label) of one case on the cached grid, (X, Y, Z) RAS+: the image float32 and
        normalised (:class:`IntensityStats`), the label map int64 with dataset.json's values."""
        entry = self.entry(case) if isinstance(case, str) else case
        image = self.stats.normalise(read_volume(entry))
        label = torch.from_numpy(np.load(self.label_file(entry)).astype(np.int64))
        return image, label

    def read_case_crop(
        self, case: CacheEntry | str, start: tuple[int, int, int], size: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`load_case` of ``[start : start + size]`` only (mmap; outside the volume: air and
        background)."""
        entry = self.entry(case) if isinstance(case, str) else case
        image = self.stats.normalise(read_crop(entry, start, size))
        labels = _padded_crop(np.load(self.label_file(entry), mmap_mode="r"), start, size, 0)
        return image, torch.from_numpy(labels.astype(np.int64))
