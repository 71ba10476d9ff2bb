"""End to end: `ctvlp eval --transfer rad_chestct=PATH` on the trained cpu_demo COLIPRI-C run and a
small phantom RAD-ChestCT (findings in the voxels, labels in the dataset's 84 x 52 tables): its test
split scored with the CT-RATE validation thresholds and probe, labels mapped onto CT-RATE names."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctvlp.cli import main
from ctvlp.config.loader import checkpoint_config
from ctvlp.run_dir import read_checkpoint, resolve_checkpoint
from datamodules.cache import cache_path
from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.rad_chestct_writer import MANIFEST, write_phantom_rad_chestct

# 30 volumes: 18 train, 6 valid, 6 test. Quarter-size chests (0.8 mm stored, drawn at 3.2 mm) keep the
# phantom and its cache to a few seconds; the cache holds every split, as `ctvlp preprocess` would.
RAD_N = 30
RAD_SCALE = 0.25
SPLIT = "transfer_rad_chestct"
TASKS = ("zeroshot_short", "probe")


@dataclass
class Evaluated:
    out: Path
    seconds: float


def _eval(ckpt: Path, out: Path, root: Path, one_torch_thread) -> tuple[int, float]:
    start = time.perf_counter()
    with one_torch_thread():
        code = main(
            [
                "eval",
                "--ckpt",
                str(ckpt),
                "--out",
                str(out),
                "--no-progress",
                "--tasks",
                ",".join(TASKS),
                "--splits",
                "test",
                "--transfer",
                f"rad_chestct={root}",
                "evaluation.probe_steps=20",
                "evaluation.bootstrap_resamples=0",
            ]
        )
    return code, time.perf_counter() - start


@pytest.fixture(scope="module")
def rad_chestct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom_rad_chestct") / "rad_chestct"
    write_phantom_rad_chestct(root, RAD_N, seed=0, scale=RAD_SCALE, workers=2, progress=False)
    return root


@pytest.fixture(scope="module")
def transfer_cache(trained_run: Path) -> Path:
    """Where the transfer volumes are cached: the run's cache folder, RAD-ChestCT at the run's spacing."""
    cfg = checkpoint_config(read_checkpoint(resolve_checkpoint(trained_run)).config, [])
    return cache_path(
        Path(cfg.data.cache_dir), "rad_chestct", float(cfg.data.spacing), cfg.data.interpolation
    )


@pytest.fixture(scope="module")
def evaluated(
    trained_run: Path, rad_chestct_root: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread
) -> Evaluated:
    out = tmp_path_factory.mktemp("eval_transfer")
    code, seconds = _eval(trained_run / "checkpoints" / "last.ckpt", out, rad_chestct_root, one_torch_thread)
    assert code == 0
    return Evaluated(out, seconds)


def _test_labels(root: Path) -> dict[str, list[str]]:
    """The CT-RATE findings the phantom drew in each RAD-ChestCT test volume (its ground truth)."""
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    return {rid: labels for rid, labels in manifest["ct_rate_labels"].items() if rid.startswith("tst")}


def test_transfer_scores_the_rad_chestct_test_split_with_ct_rate_thresholds_and_probe(
    evaluated: Evaluated, rad_chestct_root: Path
) -> None:
    out = evaluated.out
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    per_label = json.loads((out / "results_per_label.json").read_text(encoding="utf-8"))
    unmapped = ["Mosaic attenuation pattern"]  # RAD-ChestCT's air trapping is a cause, not the pattern
    mapped = [name for name in CT_RATE_LABELS if name not in unmapped]
    test_labels = _test_labels(rad_chestct_root)
    positives = {name: sum(name in found for found in test_labels.values()) for name in mapped}
    both_classes = {name for name, count in positives.items() if 0 < count < len(test_labels)}
    assert len(both_classes) >= 3, positives  # the phantom's test split is worth scoring

    assert results[f"{SPLIT}/dataset/volumes"] == len(test_labels)
    assert results[f"{SPLIT}/dataset/unmapped_labels"] == 1.0
    assert results[f"{SPLIT}/dataset/mapped_labels"] == 17.0
    assert per_label[f"{SPLIT}/unmapped_labels"] == unmapped
    assert sorted(per_label[f"{SPLIT}/mapped_labels"]) == sorted(mapped)
    assert per_label[f"{SPLIT}/mapped_labels"]["Arterial wall calcification"] == ["calcification*aorta"]
    for task in TASKS:
        for metric in ("AUROC", "AUPRC", "F1", "BA"):
            assert 0.0 <= results[f"{SPLIT}/{task}/{metric}"] <= 1.0, (task, metric)
        values = per_label[f"{SPLIT}/{task}/AUROC"]
        assert set(values) == set(mapped)  # the mapped labels, by name; never the unmapped one
        assert {name for name, value in values.items() if value is not None} == both_classes
        assert set(per_label[f"{SPLIT}/{task}/excluded"]) == set(mapped) - both_classes
        # The CT-RATE validation thresholds, the only ones fitted (nothing is fitted on the transfer split)
        assert f"val/{task}/threshold" in per_label and not any(
            k.startswith(f"{SPLIT}/{task}/thr") for k in per_label
        )
    assert not any(key.startswith(f"{SPLIT}/retrieval") for key in results)  # RAD-ChestCT has no reports
    assert "test/probe/AUROC" in results and "val/probe/probes" in results  # the run's own splits as before

    table = (out / "results.md").read_text(encoding="utf-8")
    assert table.startswith("| split | task |")
    section = table[table.index("### Transfer: rad_chestct") :]
    assert f"{len(test_labels)} volumes; 17 labels mapped, 1 without a counterpart" in section
    assert f"| {SPLIT} | probe |" in section and f"| {SPLIT} | zeroshot_short |" in section
    assert f"| {SPLIT} |" not in table[: table.index("### Transfer")]  # not mixed into the CT-RATE rows
    log = (out / "eval.log").read_text(encoding="utf-8")
    assert "without a counterpart in rad_chestct: Mosaic attenuation pattern" in log
    print(
        f"\nctvlp eval --transfer took {evaluated.seconds:.1f} s; "
        + ", ".join(f"{k}={results[k]:.3f}" for k in sorted(results) if k.endswith("/AUROC"))
        + f"; per label ({SPLIT}/probe/AUROC): {per_label[f'{SPLIT}/probe/AUROC']}"
    )


def test_a_second_transfer_evaluation_reuses_the_cache_and_the_features(
    evaluated: Evaluated, trained_run: Path, rad_chestct_root: Path, transfer_cache: Path, one_torch_thread
) -> None:
    volumes = sorted((transfer_cache / "volumes").glob("*.npy"))
    assert len(volumes) == RAD_N  # every split cached at the run's spacing, as `ctvlp preprocess` does
    stamps = {path: path.stat().st_mtime_ns for path in [transfer_cache / "index.json", *volumes]}
    log = evaluated.out / "eval.log"
    before = log.read_text(encoding="utf-8")
    assert "Transfer rad_chestct: built the cache" in before
    first = json.loads((evaluated.out / "results.json").read_text(encoding="utf-8"))

    code, seconds = _eval(
        trained_run / "checkpoints" / "last.ckpt", evaluated.out, rad_chestct_root, one_torch_thread
    )
    assert code == 0
    second = log.read_text(encoding="utf-8")[len(before) :]
    assert f"Transfer rad_chestct: reusing the cache {transfer_cache}" in second
    assert f"Reusing cached features in {evaluated.out / 'eval_features' / SPLIT}" in second
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # nothing rebuilt
    results = json.loads((evaluated.out / "results.json").read_text(encoding="utf-8"))
    for task in TASKS:  # the same features, probe and thresholds: the same numbers
        assert results[f"{SPLIT}/{task}/AUROC"] == first[f"{SPLIT}/{task}/AUROC"]
    print(f"\nsecond ctvlp eval --transfer took {seconds:.1f} s (first {evaluated.seconds:.1f} s)")


def test_bad_transfer_input_fails_with_a_clear_message_and_exit_code_2(
    trained_run: Path, rad_chestct_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"  # created by the first line an evaluation logs: never, here

    def error(*arguments: str, ckpt: Path = tmp_path / "missing.ckpt") -> str:
        """The error of ``ctvlp eval``; a missing checkpoint (the default) shows that the transfer
        arguments are checked before the checkpoint is read."""
        assert main(["eval", "--ckpt", str(ckpt), "--out", str(out), "--no-progress", *arguments]) == 2
        assert not out.exists()
        return capsys.readouterr().err

    rad = f"rad_chestct={rad_chestct_root}"
    err = error("--transfer", f"merlin={rad_chestct_root}")
    assert "unknown transfer dataset 'merlin'; available: rad_chestct, inspect" in err
    assert "must look like NAME=PATH" in error("--transfer", str(rad_chestct_root))
    missing = tmp_path / "nowhere"
    err = error("--transfer", f"rad_chestct={missing}")
    assert f"RAD-ChestCT data root {missing} does not exist" in err
    assert "Run `ctvlp phantom --source rad_chestct --out DIR`" in err  # what to do
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"RAD-ChestCT data root {empty} has no label table" in error("--transfer", f"rad_chestct={empty}")
    assert "names 'rad_chestct' twice" in error("--transfer", rad, "--transfer", rad)
    err = error("--transfer", rad, "--tasks", "dense_zeroshot")
    assert "--transfer is not supported for --tasks dense_zeroshot yet" in err
    # Refused once the checkpoint says which tasks it runs, before any cache or feature work.
    err = error("--transfer", rad, "--tasks", "retrieval", ckpt=trained_run / "checkpoints" / "last.ckpt")
    assert "no reports, so they are scored by the zero-shot and probe tasks only" in err
    inspect_root = tmp_path / "inspect"
    assert main(["phantom", "--source", "inspect", "--out", str(inspect_root), "--n", "4", "--scale", "0.5",
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    err = error("--transfer", f"inspect={inspect_root}", ckpt=trained_run / "checkpoints" / "last.ckpt")
    assert "--transfer inspect: it shares no label with CT-RATE" in err and "uniferum runs" in err
