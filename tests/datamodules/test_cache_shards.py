"""Sharded cache builds: two concurrent ``ctvlp preprocess --shard K/2`` processes build the same
cache, byte for byte, as one process; ``--finalize`` names missing shards; other parameters stop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctvlp.cli import main
from ctvlp.config.errors import ConfigError
from datamodules.cache import cache_path
from datamodules.cache_shards import SHARDS_DIR, Shard, ShardsIncompleteError
from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate
from datamodules.preprocess import build_cache, build_cache_shard, finalize_cache
from datamodules.sources.ct_rate import scan_ct_rate

REPO = Path(__file__).resolve().parents[2]
SCANS = 20
SPACING = 6.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A phantom CT-RATE with one missing volume file (rejected by the scan) and one truncated one
    (quarantined by the builder), its single-process cache, and the same cache built by 2 shards."""
    base = tmp_path_factory.mktemp("shards")
    data = base / "ct_rate"
    write_phantom_ct_rate(data, n=SCANS, seed=0, workers=2, progress=False)
    # Scans with a single reconstruction, so that the damage is not hidden by another reconstruction.
    single_recon = [
        r.image_path
        for r in scan_ct_rate(data, CT_RATE_LABELS).records
        if len(list(r.image_path.parent.iterdir())) == 1
    ]
    single_recon[0].unlink()
    single_recon[3].write_bytes(single_recon[3].read_bytes()[:2000])

    scan = scan_ct_rate(data, CT_RATE_LABELS)
    single = cache_path(base / "single", "ct_rate", SPACING, "paper")
    build_cache(
        scan.records,
        single,
        SPACING,
        workers=1,
        progress=False,
        rejected=scan.rejected,
        source_root=data,
    )

    # Both shards at once, as a SLURM array runs them. (Not beside the build above: three processes
    # of torch threads on two cores spin-wait for minutes.)
    sharded_dir = base / "sharded"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    procs = []
    for k in (1, 2):
        log = open(base / f"shard{k}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below, after the process ends
        command = [
            sys.executable, "-m", "ctvlp.cli", "preprocess", "--source", "ct_rate", "--root", str(data),
            "--spacing", str(SPACING), "--cache-dir", str(sharded_dir), "--shard", f"{k}/2",
            "--workers", "1", "--no-progress",
        ]  # fmt: skip
        procs.append(
            (subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        )

    for proc, log in procs:
        proc.wait(timeout=300)
        log.close()
    outputs = [(base / f"shard{k}.log").read_text(encoding="utf-8") for k in (1, 2)]
    for (proc, _), output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
    print(f"2 shard processes: {time.perf_counter() - start:.1f} s")
    return {
        "data": data,
        "single": single,
        "sharded": cache_path(sharded_dir, "ct_rate", SPACING, "paper"),
        "sharded_dir": sharded_dir,
        "log1": base / "shard1.log",
        "log2": base / "shard2.log",
    }


def test_shards_build_the_same_cache_as_one_process(built: dict[str, Path]) -> None:
    single, sharded = built["single"], built["sharded"]
    # No field legitimately differs: entry files are relative, quarantine paths are the data's own.
    for name in ("index.json", "quarantine.csv", "build.json", "source.json"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name

    index = json.loads((single / "index.json").read_text(encoding="utf-8"))
    ids = [e["id"] for e in index["entries"]]
    assert len(ids) >= 15
    quarantine = (single / "quarantine.csv").read_text(encoding="utf-8")
    assert "without a volume file" in quarantine  # the scan's row, first
    assert len(quarantine.splitlines()) == 3  # header, the scan's row, the builder's row

    for volume_id in ids:
        a = np.load(single / "volumes" / f"{volume_id}.npy")
        b = np.load(sharded / "volumes" / f"{volume_id}.npy")
        assert a.dtype == b.dtype and np.array_equal(a, b), volume_id
    assert sorted(p.name for p in (sharded / "volumes").iterdir()) == sorted(f"{i}.npy" for i in ids)

    # Each shard built its own half (round-robin over sorted ids) and said so.
    halves = []
    for k in (1, 2):
        result = json.loads((sharded / SHARDS_DIR / f"{k}-of-2.json").read_text(encoding="utf-8"))
        halves.append({e["id"] for _, e in result["entries"]} | {r[0] for _, r in result["failed"]})
        assert f"shard {k}/2:" in built[f"log{k}"].read_text(encoding="utf-8")
    assert not halves[0] & halves[1]
    assert halves[0] | halves[1] >= set(ids)
    assert abs(len(halves[0]) - len(halves[1])) <= 1


def test_shard_rerun_reuses_its_volumes(built: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(built["sharded"], cache)
    before = (cache / "index.json").read_bytes()
    (cache / "index.json").unlink()
    scan = scan_ct_rate(built["data"], CT_RATE_LABELS)
    outcome = build_cache_shard(
        scan.records,
        cache,
        SPACING,
        Shard(2, 2),
        workers=1,
        progress=False,
        rejected=scan.rejected,
        source_root=built["data"],
    )
    assert outcome.built == 0 and outcome.reused == outcome.owned - outcome.quarantined > 0
    assert outcome.index is not None and outcome.waiting_for == []
    assert (cache / "index.json").read_bytes() == before


def _cli(built: dict[str, Path], cache_dir: Path, *extra: str) -> int:
    return main(
        [
            "preprocess", "--source", "ct_rate", "--root", str(built["data"]), "--cache-dir", str(cache_dir),
            "--workers", "1", "--no-progress", *extra,
        ]
    )  # fmt: skip


def test_finalize_names_the_missing_shard_then_assembles(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    shutil.copytree(built["sharded_dir"], cache_dir)
    cache = cache_path(cache_dir, "ct_rate", SPACING, "paper")
    index = (cache / "index.json").read_bytes()
    (cache / "index.json").unlink()
    kept = (cache / SHARDS_DIR / "2-of-2.json").read_bytes()
    (cache / SHARDS_DIR / "2-of-2.json").unlink()

    assert _cli(built, cache_dir, "--spacing", "6", "--finalize") == 2
    error = capsys.readouterr().err
    assert "missing shard(s) 2/2" in error and "1/2" not in error
    assert not (cache / "index.json").exists()
    scan = scan_ct_rate(built["data"], CT_RATE_LABELS)
    with pytest.raises(ShardsIncompleteError, match="missing shard"):
        finalize_cache(scan.records, cache, SPACING, rejected=scan.rejected)

    # A result from other records (here: one report changed) is stale, not assembled.
    (cache / SHARDS_DIR / "2-of-2.json").write_bytes(kept)
    scan.records[0].sections["findings"] += " Changed."
    with pytest.raises(ShardsIncompleteError, match=r"shard\(s\) 1/2, 2/2 built from other records"):
        finalize_cache(scan.records, cache, SPACING, rejected=scan.rejected)

    assert _cli(built, cache_dir, "--spacing", "6", "--finalize") == 0
    assert (cache / "index.json").read_bytes() == index


def test_a_shard_with_other_parameters_stops(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    shutil.copytree(built["sharded_dir"], cache_dir)
    cache = cache_path(cache_dir, "ct_rate", SPACING, "paper")
    build = (cache / "build.json").read_bytes()
    scan = scan_ct_rate(built["data"], CT_RATE_LABELS)
    with pytest.raises(ConfigError, match="holds a cache built with"):
        build_cache_shard(scan.records, cache, 4.0, Shard(1, 2), workers=1, progress=False)
    # 6.0000001 mm names the same folder (6mm-paper) but is another spacing: exit code 2, no work done.
    assert _cli(built, cache_dir, "--spacing", "6.0000001", "--shard", "1/2") == 2
    error = capsys.readouterr().err
    assert "holds a cache built with" in error and "6.0000001" in error
    assert (cache / "build.json").read_bytes() == build
    assert (cache / SHARDS_DIR / "1-of-2.json").is_file()


def test_shard_assignment_is_balanced_and_deterministic() -> None:
    from datamodules.records import Record

    records = [
        Record(id=f"v_{i:03d}", patient_id="p", split="train", image_path=Path("x")) for i in range(10)
    ]
    shuffled = records[::-1]
    shares = [Shard(k, 3).owns(shuffled) for k in (1, 2, 3)]
    assert [[r.id for r in s] for s in shares] == [[r.id for r in records[k::3]] for k in range(3)]
    assert Shard.parse(" 3/8 ") == Shard(3, 8)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError):
            Shard.parse(bad)
