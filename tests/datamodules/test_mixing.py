"""Several sources in one DataModule: weighted mixing, batches of one kind, exact resume, labels in
the primary's name space, resumable cache builds, and the data.sources config."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from datamodules.cache import CacheIndex, cache_path
from datamodules.datamodule import STRUCTURED_FINDINGS_FILE, ensure_cache
from datamodules.labels import CT_RATE_LABELS, MERLIN_TO_CT_RATE
from datamodules.samplers import MixedBatchSampler

SPACING = 6.0
SIZES, KINDS, WEIGHTS = [40, 25, 15], ["paired", "paired", "image_only"], [0.5, 0.3, 0.2]


def _source_of(sampler: MixedBatchSampler, index: int) -> int:
    return int(np.searchsorted(sampler.offsets, index, side="right")) - 1


def test_mixing_proportions_follow_the_weights_and_batches_keep_one_kind() -> None:
    sampler = MixedBatchSampler(SIZES, KINDS, WEIGHTS, batch_size=4, seed=0)
    counts: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    for step in range(2000):
        sources = [_source_of(sampler, i) for i, _ in sampler.global_batch_at(step)]
        batch_kinds = {KINDS[s] for s in sources}
        assert batch_kinds == {sampler.kind_at(step)}  # one kind per batch
        kinds[batch_kinds.pop()] += 1
        counts.update(sources)
    total = sum(counts.values())
    for source, weight in enumerate(WEIGHTS):
        assert abs(counts[source] / total - weight) < 0.03, (source, counts[source] / total)
    assert abs(kinds["image_only"] / 2000 - 0.2) < 0.03


def test_each_source_is_walked_in_permutations() -> None:
    sampler = MixedBatchSampler(SIZES, KINDS, WEIGHTS, batch_size=4, seed=1)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for step in range(200):
        for index, _ in sampler.global_batch_at(step):
            source = _source_of(sampler, index)
            seen[source].append(index - int(sampler.offsets[source]))
    for source, size in enumerate(SIZES):
        first_epoch = seen[source][:size]
        assert sorted(first_epoch) == list(range(size))  # every volume once per source epoch


def test_stream_is_a_function_of_seed_and_step() -> None:
    uninterrupted = list(MixedBatchSampler(SIZES, KINDS, WEIGHTS, 4, seed=0, steps_per_epoch=1500))
    resumed = MixedBatchSampler(
        SIZES, KINDS, WEIGHTS, 4, seed=0, global_step=lambda: 1100, steps_per_epoch=400
    )
    assert list(resumed) == uninterrupted[1100:1500]  # crosses a chunk boundary (512, 1024)
    other = list(MixedBatchSampler(SIZES, KINDS, WEIGHTS, 4, seed=1, steps_per_epoch=50))
    assert other != uninterrupted[:50]


def test_ddp_ranks_split_the_single_process_global_batch() -> None:
    single = list(MixedBatchSampler(SIZES, KINDS, WEIGHTS, batch_size=4, seed=0, steps_per_epoch=20))
    shards = []
    for rank in range(2):
        with mock.patch("datamodules.samplers._rank_and_world", return_value=(rank, 2)):
            shards.append(list(MixedBatchSampler(SIZES, KINDS, WEIGHTS, 2, seed=0, steps_per_epoch=20)))
    assert [a + b for a, b in zip(*shards, strict=True)] == single


def test_bad_mixing_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        MixedBatchSampler(SIZES, KINDS, [1.0, 0.0, 1.0], 4)
    with pytest.raises(ValueError, match="training samples"):
        MixedBatchSampler([3, 0], ["paired", "paired"], [1.0, 1.0], 4)


@pytest.fixture
def make_mixed(
    sources_cache_dir: Path,
    small_ct_rate_root: Path,
    merlin_root: Path,
    image_only_root: Path,
    make_datamodule,
):
    """A fresh DataModule over the CT-RATE + Merlin + image-only mix (0.5 / 0.3 / 0.2)."""
    sources = [
        {"name": "ct_rate", "root": str(small_ct_rate_root), "weight": 0.5},
        {"name": "merlin", "root": str(merlin_root), "weight": 0.3},
        {"name": "image_only", "root": str(image_only_root), "weight": 0.2},
    ]
    return lambda: make_datamodule(
        sources_cache_dir, sources=sources, batch_size=2, augmentation={"level": "none"}
    )


def test_multi_source_datamodule(make_mixed) -> None:
    dm = make_mixed()
    assert dm.label_names == CT_RATE_LABELS  # the primary's label space
    assert {e.source for e in dm.splits["val"] + dm.splits["test"]} == {"ct_rate"}  # primary evaluated
    loader = dm.train_dataloader()
    per_source: Counter[str] = Counter()
    merlin_mapped = [CT_RATE_LABELS.index(n) for n in MERLIN_TO_CT_RATE]
    batches = list(loader)
    assert len(batches) == len(loader.batch_sampler)
    for batch in batches:
        (kind,) = set(batch["kind"])
        assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["labels"].shape == (2, 18)
        assert torch.equal(batch["label_mask"], ~batch["labels"].isnan())
        if kind == "paired":
            assert set(batch["source"]) <= {"ct_rate", "merlin"} and len(batch["input_ids"]) == 2
        else:
            assert set(batch["source"]) == {"image_only"} and "input_ids" not in batch
            assert bool(batch["labels"].isnan().all())
        for source, labels in zip(batch["source"], batch["labels"], strict=True):
            per_source[source] += 1
            if source == "ct_rate":
                assert not bool(labels.isnan().any())
            elif source == "merlin":
                unmapped = [i for i in range(18) if i not in merlin_mapped]
                assert bool(labels[unmapped].isnan().all())
    assert set(per_source) == {"ct_rate", "merlin", "image_only"}

    # Exact resume: a loader started at step k yields the uninterrupted stream's batch k.
    dm._global_step = lambda: 3  # type: ignore[method-assign]
    resumed = next(iter(dm.train_dataloader()))
    assert resumed["image_id"] == batches[3]["image_id"]
    assert torch.equal(resumed["image"], batches[3]["image"])


def test_every_paired_source_of_a_mix_reads_its_own_structured_sidecar(make_mixed, merlin_root: Path) -> None:
    plain = make_mixed()
    plain.setup()
    merlin_part = plain.mixed_train.parts[1]
    assert plain.mixed_train.parts[0][(0, 0)]["sections"]["Lungs and Airways"]  # keyword rules
    sidecar = merlin_root / STRUCTURED_FINDINGS_FILE
    entry = merlin_part.entries[0]
    sidecar.write_text(
        json.dumps({f"{entry.id}.nii.gz": {"Tubes, Lines, and Devices": ["A port."]}}), encoding="utf-8"
    )
    try:
        mixed = make_mixed()
        mixed.setup()
        sections = mixed.mixed_train.parts[1][(0, 0)]["sections"]
    finally:
        sidecar.unlink()
    assert sections["Tubes Lines and Devices"] == ["A port."] and sections["Lungs and Airways"] == []
    # The primary (CT-RATE, no sidecar in its root) still uses the rules.
    assert mixed.mixed_train.parts[0][(0, 0)]["sections"]["Lungs and Airways"]


def test_ensure_cache_checks_entries_and_rebuilds_only_the_broken_one(
    sources_cache_dir: Path, merlin_root: Path, tmp_path: Path, data_config
) -> None:
    cache_dir = tmp_path / "cache"
    shutil.copytree(sources_cache_dir / "merlin", cache_dir / "merlin")
    cache_root = cache_path(cache_dir, "merlin", SPACING, "paper")
    index = CacheIndex.load(cache_root)
    mtimes = {e.id: e.file.stat().st_mtime_ns for e in index.entries}
    victim = index.entries[2]
    with open(victim.file, "r+b") as f:  # a half-written entry left by a killed run
        f.truncate(victim.file.stat().st_size // 2)
    data = data_config(cache_dir, source="merlin", root=str(merlin_root))
    rebuilt = ensure_cache(data, progress=False)
    assert rebuilt.is_complete() and len(rebuilt.entries) == len(index.entries)
    for entry in rebuilt.entries:
        changed = entry.file.stat().st_mtime_ns != mtimes[entry.id]
        assert changed == (entry.id == victim.id), entry.id
    again = {e.id: e.file.stat().st_mtime_ns for e in ensure_cache(data, progress=False).entries}
    assert again == {e.id: e.file.stat().st_mtime_ns for e in rebuilt.entries}


def test_config_sources_list(tmp_path: Path) -> None:
    sources = (
        f"data.sources=[{{name: ct_rate, root: {tmp_path}, weight: 2}}, {{name: merlin, root: {tmp_path}}}]"
    )
    cfg = load_experiment("colipri_c", overrides=[sources])  # data.root is not needed with a list
    assert [s.name for s in cfg.data.sources] == ["ct_rate", "merlin"]
    assert cfg.data.sources[1].weight == 1.0
    with pytest.raises(ConfigError, match="Did you mean 'merlin'"):
        load_experiment("colipri_c", overrides=[f"data.sources=[{{name: merlyn, root: {tmp_path}}}]"])
    with pytest.raises(ConfigError, match="data.root"):
        load_experiment("colipri_c")
    assert math.isclose(cfg.data.sources[0].weight, 2.0)
