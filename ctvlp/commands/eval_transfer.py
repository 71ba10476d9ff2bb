"""``ctvlp eval --transfer NAME=PATH``: external evaluation of a frozen encoder on another dataset.

The transfer dataset's evaluation split (RAD-ChestCT: its official test split) is scored beside
the run's own splits, in the same :class:`~evaluation.runner.Evaluator` run, so thresholds and the
chosen probe come from the run's own validation split (CT-RATE) and are applied frozen:

- its volumes are preprocessed exactly as the run's primary source (the same cache spacing,
  interpolation, crop size, crop field and HU window), into that source's own cache
  (``<data.cache_dir>/<name>/<spacing>mm-<interpolation>``, the cache ``ctvlp preprocess --source
  <name>`` writes; reused when complete);
- its labels are mapped onto the model's label space through the CT-RATE names
  (``datamodules.labels``); the model labels without a counterpart are logged, listed under
  ``transfer_<name>/unmapped_labels`` in ``results_per_label.json`` and counted in
  ``results.json`` (``transfer_<name>/dataset/unmapped_labels``);
- it has no reports, so retrieval is left out; results are ``transfer_<name>/<task>/<metric>``.

Uniferum checkpoints are scored on the transfer dataset's own labels instead
(``ctvlp/commands/eval_task_transfer.py``). Report generators and the dense and report tasks do not
support it yet; asking for them is an error that says so.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig

from ctvlp.config.errors import ConfigError
from ctvlp.config.evaluation_tasks import CLASSIFICATION_TASKS
from ctvlp.results import TRANSFER_DATASET_TASK, TRANSFER_PREFIX
from datamodules.batching import stack_samples
from datamodules.cache import CacheEntry, CacheIndex
from datamodules.datamodule import crop_settings, ensure_source_cache, source_cache_root, source_spacing
from datamodules.errors import DataRootError
from datamodules.image_dataset import ImageOnlyVolumeDataset
from datamodules.labels import label_projection, project_labels
from datamodules.loaders import seeded_loader
from datamodules.mixing import DataSource, data_sources
from datamodules.samplers import EvalSampler
from datamodules.sources import inspect, rad_chestct
from datamodules.sources.registry import get_source
from evaluation.features import checkpoint_identity, fingerprint
from evaluation.runner import EvalOutput, EvalSplit

log = logging.getLogger(__name__)


def _check_rad_chestct(root: Path, split: str) -> Path:
    """The RAD-ChestCT root, with the label table and at least one volume of ``split``."""
    root = rad_chestct.resolve_root(root)
    table, prefix = rad_chestct.TABLES[split]
    what = f"--transfer rad_chestct evaluates RAD-ChestCT's {split} split"
    if not (root / table).is_file() and next(root.rglob(table), None) is None:
        raise DataRootError(
            f"RAD-ChestCT data root {root} has no {table}: {what}.\n{rad_chestct.EXPECTED_LAYOUT}"
        )
    if next(root.rglob(f"{prefix}*{rad_chestct.VOLUME_SUFFIX}"), None) is None:
        raise DataRootError(
            f"RAD-ChestCT data root {root} has no {prefix}*{rad_chestct.VOLUME_SUFFIX} volumes: {what}.\n"
            f"{rad_chestct.EXPECTED_LAYOUT}"
        )
    return root


def _check_inspect(root: Path, split: str) -> Path:
    """The INSPECT root, with its impression, label and split tables."""
    return inspect.resolve_root(root)


@dataclass(frozen=True)
class TransferDataset:
    """A dataset ``--transfer`` knows: its data source, the split it evaluates, a root check, and
    whether frozen encoders can be scored on it (its labels map onto CT-RATE names) or only
    Uniferum runs (their task texts)."""

    source: str
    split: str
    check_root: Callable[[Path, str], Path]
    frozen_encoders: bool = True


DATASETS: dict[str, TransferDataset] = {
    "rad_chestct": TransferDataset("rad_chestct", "test", _check_rad_chestct),
    # INSPECT shares no label with CT-RATE: its PE and outcome tasks are Uniferum's zero-shot ones.
    "inspect": TransferDataset("inspect", "test", _check_inspect, frozen_encoders=False),
}


@dataclass(frozen=True)
class Transfer:
    """One ``--transfer NAME=PATH``, its root checked."""

    name: str
    root: Path

    @property
    def dataset(self) -> TransferDataset:
        return DATASETS[self.name]

    @property
    def split_name(self) -> str:
        return f"{TRANSFER_PREFIX}{self.name}"


def parse_transfers(items: Sequence[str] | None) -> list[Transfer]:
    """``NAME=PATH`` items (repeatable) -> transfers, each root checked for its dataset's files.

    Cheap and done before any checkpoint is read: an unknown name or a malformed item is a
    :class:`ConfigError`, a missing path or a root without the dataset's files a ``DataRootError``.
    """
    transfers: list[Transfer] = []
    for item in items or []:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(
                f"--transfer {item!r} must look like NAME=PATH, e.g. rad_chestct=/data/rad_chestct"
            )
        if name not in DATASETS:
            raise ConfigError(
                f"--transfer {item!r}: unknown transfer dataset {name!r}; available: {', '.join(DATASETS)}"
            )
        if any(t.name == name for t in transfers):
            raise ConfigError(f"--transfer names {name!r} twice")
        dataset = DATASETS[name]
        try:
            root = dataset.check_root(Path(path).expanduser(), dataset.split)
        except DataRootError as error:
            raise DataRootError(f"--transfer {item}: {error}") from error
        transfers.append(Transfer(name, root))
    return transfers


def refuse_transfer(transfers: Sequence[Transfer], what: str) -> None:
    """A clear error when ``--transfer`` meets an evaluation that does not support it (``what``)."""
    if transfers:
        raise ConfigError(
            f"--transfer is not supported for {what} yet: it evaluates the frozen encoders of "
            "colipri, greenrfm, mae and cappa checkpoints (zero-shot and probe tasks) and uniferum "
            "checkpoints (their tasks). Run it without --transfer"
        )


def check_transfer_tasks(transfers: Sequence[Transfer], tasks: Sequence[str]) -> None:
    """A frozen encoder's transfer: datasets whose labels map onto CT-RATE names, scored by a
    zero-shot or probe task (they have labels but no reports)."""
    for transfer in transfers:
        if not transfer.dataset.frozen_encoders:
            raise ConfigError(
                f"--transfer {transfer.name}: it shares no label with CT-RATE, so a frozen encoder has "
                "nothing to be scored on there; it scores uniferum runs (--ckpt of a uniferum run)"
            )
    if transfers and not any(t in CLASSIFICATION_TASKS for t in tasks):
        names = ", ".join(t.name for t in transfers)
        raise ConfigError(
            f"--transfer {names}: the transfer datasets have no reports, so they are scored by the "
            f"zero-shot and probe tasks only; --tasks asks for {', '.join(tasks)}. Add zeroshot or probe"
        )


@dataclass
class TransferSplit:
    """A transfer dataset's evaluation split, ready for the Evaluator, and its label coverage."""

    transfer: Transfer
    split: EvalSplit
    mapped: dict[str, list[str]]  # model label -> the transfer dataset's labels it is derived from
    unmapped: list[str]  # model labels without a counterpart

    def add_outputs(self, output: EvalOutput) -> None:
        """The label coverage in ``output``: counts in results, names in the per-label values."""
        name = self.split.name
        output.results[f"{name}/{TRANSFER_DATASET_TASK}/volumes"] = float(self.split.volumes)
        output.results[f"{name}/{TRANSFER_DATASET_TASK}/mapped_labels"] = float(len(self.mapped))
        output.results[f"{name}/{TRANSFER_DATASET_TASK}/unmapped_labels"] = float(len(self.unmapped))
        output.results = dict(sorted(output.results.items()))
        output.per_label[f"{name}/unmapped_labels"] = list(self.unmapped)
        output.per_label[f"{name}/mapped_labels"] = dict(self.mapped)


def transfer_split(
    transfer: Transfer,
    data: DictConfig,
    label_names: Sequence[str],
    seed: int,
    features_dir: Path,
    progress: bool = True,
) -> TransferSplit:
    """The transfer dataset's split, preprocessed as the run's own data (``data``: the run's data
    config; its primary source sets the cache spacing), its labels mapped onto ``label_names`` (the
    model's), served as centre crops. Its cached features under ``features_dir`` are dropped when
    the dataset's cache or the label mapping changed since they were written."""
    dataset = transfer.dataset
    primary = data_sources(data)[0]
    source = DataSource(
        dataset.source,
        str(transfer.root),
        1.0,
        get_source(dataset.source),
        spacing=source_spacing(data, primary),
    )
    index_file = source_cache_root(data, source) / "index.json"
    before = index_file.stat().st_mtime_ns if index_file.exists() else None
    index = ensure_source_cache(data, source, progress=progress)
    reused = before is not None and index_file.stat().st_mtime_ns == before
    log.info(
        "Transfer %s: %s the cache %s (%d volumes)",
        transfer.name,
        "reusing" if reused else "built",
        index_file.parent,
        len(index.entries),
    )
    projection = label_projection(dataset.source, list(index.label_names), primary.name, list(label_names))
    mapped = {
        name: [index.label_names[i] for i in indices]
        for name, indices in zip(label_names, projection, strict=True)
        if indices
    }
    unmapped = [name for name, indices in zip(label_names, projection, strict=True) if not indices]
    if not mapped:
        raise ConfigError(
            f"--transfer {transfer.name}: none of the model's labels ({', '.join(label_names)}) has a "
            f"counterpart in {dataset.source}"
        )
    entries = _split_entries(index, index_file.parent, dataset.split, transfer)
    columns = [projection[list(label_names).index(name)] for name in mapped]
    projected = [replace(e, labels=project_labels(list(e.labels), columns)) for e in entries]
    log.info(
        "Transfer %s: %d %s volumes; %d of the %d model labels mapped; without a counterpart in %s: %s",
        transfer.name,
        len(projected),
        dataset.split,
        len(mapped),
        len(label_names),
        dataset.source,
        ", ".join(unmapped) or "none",
    )
    crop, field, window = crop_settings(data)
    volumes = ImageOnlyVolumeDataset(projected, crop, False, crop_field=field, hu_window=window)
    loader = seeded_loader(
        volumes,
        stack_samples,
        int(data.num_workers),
        seed,
        sampler=EvalSampler(len(volumes)),
        batch_size=int(data.batch_size),
    )
    split = EvalSplit(transfer.split_name, loader, len(volumes), label_names=list(mapped), has_reports=False)
    _drop_stale_features(features_dir, split.name, index_file, mapped)
    return TransferSplit(transfer, split, mapped, unmapped)


def _split_entries(index: CacheIndex, cache_root: Path, split: str, transfer: Transfer) -> list[CacheEntry]:
    entries = [e for e in index.entries if e.split == split]
    if not entries:
        counts = {s: sum(e.split == s for e in index.entries) for s in ("train", "val", "test")}
        raise DataRootError(
            f"--transfer {transfer.name}={transfer.root}: no {split} volume could be cached (volumes per "
            f"official split: {counts}); {cache_root / 'quarantine.csv'} says why each was left out"
        )
    return entries


def _drop_stale_features(features_dir: Path, split: str, index_file: Path, mapped: dict) -> None:
    """The Evaluator keys a split's cached features by the weights, the run's data and the split's
    size; a transfer split's also depend on its own cache and label mapping, stamped beside them."""
    stamp = features_dir / f"{split}.source.json"
    current = fingerprint(checkpoint_identity(index_file), mapped)
    previous = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") if stamp.exists() else None
    if previous != current:
        if (features_dir / split).exists():
            log.info("Transfer split %s: its dataset or label mapping changed; re-encoding it", split)
        shutil.rmtree(features_dir / split, ignore_errors=True)
        features_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"fingerprint": current}) + "\n", encoding="utf-8")
