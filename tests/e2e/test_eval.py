"""End to end: `ctvlp eval` (retrieval, zero-shot, probes) on the trained cpu_demo COLIPRI-C run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from ctvlp.commands.eval import eval_split, load_checkpoint, prepare_evaluation, training_split
from evaluation.features import checkpoint_identity
from evaluation.probes import ProbeTraining
from evaluation.runner import EvalSplit

METRICS = ("AUROC", "AUPRC", "BA", "F1", "F1_weighted")


@pytest.fixture(scope="module")
def evaluated(
    trained_run: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread
) -> Iterator[tuple[Path, float]]:
    """One `ctvlp eval` of the trained run's last checkpoint, into a separate directory."""
    out = tmp_path_factory.mktemp("eval")
    start = time.perf_counter()
    with one_torch_thread():
        code = main(
            [
                "eval",
                "--ckpt",
                str(trained_run / "checkpoints" / "last.ckpt"),
                "--out",
                str(out),
                "--no-progress",
                "--tasks",
                "retrieval,zeroshot,probe",
                "--splits",
                "val,test",
                "evaluation.bootstrap_resamples=50",  # the CI keys and their order, not their precision
            ]
        )
    elapsed = time.perf_counter() - start
    assert code == 0
    yield out, elapsed


def test_eval_writes_results_table_per_label_values_and_tensorboard(evaluated: tuple[Path, float]) -> None:
    out, elapsed = evaluated
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert all(len(key.split("/")) == 3 for key in results)
    for split in ("val", "test"):
        assert f"{split}/retrieval/R@5" in results and f"{split}/retrieval/R@5_chance" in results
        for task in ("zeroshot_native", "zeroshot_short", "probe"):
            for metric in METRICS:
                value = results[f"{split}/{task}/{metric}"]
                low, high = (
                    results[f"{split}/{task}/{metric}_ci_low"],
                    results[f"{split}/{task}/{metric}_ci_high"],
                )
                assert 0 <= low <= high <= 1 and 0 <= value <= 1
    table = (out / "results.md").read_text(encoding="utf-8")
    assert table.startswith("| split | task |") and "| test | probe |" in table and " [" in table
    per_label = json.loads((out / "results_per_label.json").read_text(encoding="utf-8"))
    assert "Lung nodule" in per_label["test/probe/AUROC"] and "val/probe/threshold" in per_label
    # The phantom never draws five of the 18 labels: excluded and named, never counted as 0.
    assert "Bronchiectasis" in per_label["test/probe/excluded"]
    selection = json.loads((out / "probe_selection.json").read_text(encoding="utf-8"))
    assert len(selection["val_AUPRC"]) == 20 and selection["selected"] in selection["val_AUPRC"]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"test/probe/AUROC", "val/zeroshot_native/AUROC", "test/retrieval/R@5"} <= set(
        events.Tags()["scalars"]
    )
    print(
        f"ctvlp eval took {elapsed:.1f} s; "
        + ", ".join(
            f"{k}={results[k]:.3f}"
            for k in ("test/probe/AUROC", "test/zeroshot_native/AUROC", "test/zeroshot_short/AUROC")
        )
    )


def test_native_zero_shot_finds_the_phantom_abnormalities(evaluated: tuple[Path, float]) -> None:
    """Native zero-shot AUROC on the phantom test split clearly above chance: 0.613 after the
    fixture's 400 steps, 0.597 once the phantom's test split gained a second non-chest scan and two
    duplicate-Findings cases (COLIPRI's retrieval protocol); the former 150-step fixture on 120
    scans, still on the ln(batch) plateau, gave 0.50."""
    results = json.loads((evaluated[0] / "results.json").read_text(encoding="utf-8"))
    assert results["test/zeroshot_native/AUROC"] > 0.58, results["test/zeroshot_native/AUROC"]


@pytest.mark.xfail(
    strict=False,
    reason="The COLIPRI probe target, blocked at CPU scale: the probe reaches 0.58 test AUROC on the "
    "400-step fixture (0.59 after the 600-step demo on 800 scans, 0.64 after 2400 steps; cardiomegaly, "
    "pericardial and pleural effusion learned, most small findings at chance). Even direct supervision "
    "stays below the target in a CPU budget on these voxels (a multi-label 3D CNN: 0.733 after 5 min). "
    "Passes (XPASS) once the encoder is trained at GPU scale.",
)
def test_probe_finds_the_phantom_abnormalities(evaluated: tuple[Path, float]) -> None:
    results = json.loads((evaluated[0] / "results.json").read_text(encoding="utf-8"))
    assert results["test/probe/AUROC"] >= 0.75, results["test/probe/AUROC"]


def test_transfer_split_reuses_the_validation_probe_and_thresholds(
    trained_run: Path, evaluated: tuple[Path, float], one_torch_thread
) -> None:
    """The phantom test split, passed as a transfer dataset with 16 of the 18 labels, gets exactly
    the test split's per-label numbers: same probe, same validation thresholds, label columns
    matched by name."""
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    cfg, module, _ = load_checkpoint(ckpt)
    datamodule, evaluator = prepare_evaluation(
        cfg, module, checkpoint_identity(ckpt), ["probe"], evaluated[0], torch.device("cpu"), progress=False
    )
    evaluator.settings.probe = ProbeTraining(steps=60, batch_size=16, seed=0)
    evaluator.settings.bootstrap_resamples = 0
    names = datamodule.label_names
    transfer_names = [n for n in names if n not in ("Lymphadenopathy", "Medical material")][::-1]
    columns = [names.index(n) for n in transfer_names]
    transfer_batches = [{**b, "labels": b["labels"][:, columns]} for b in datamodule.loader("test")]
    test = eval_split(datamodule, "test")
    transfer = EvalSplit(
        "transfer", transfer_batches, test.volumes, label_names=transfer_names, has_reports=False
    )
    with one_torch_thread():
        output = evaluator.run(
            eval_split(datamodule, "val"), [test, transfer], training_split(datamodule, ["probe"])
        )
    test_auroc, transfer_auroc = (
        output.per_label["test/probe/AUROC"],
        output.per_label["transfer/probe/AUROC"],
    )
    assert set(transfer_auroc) == set(transfer_names)
    assert all(transfer_auroc[n] == test_auroc[n] for n in transfer_names)
    test_f1, transfer_f1 = output.per_label["test/probe/F1"], output.per_label["transfer/probe/F1"]
    assert all(transfer_f1[n] == test_f1[n] for n in transfer_names)


def test_bad_input_fails_with_a_clear_message(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--ckpt", str(trained_run / "missing.ckpt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    assert main(["eval", "--ckpt", ckpt, "--tasks", "retrieval,probes"]) == 2
    err = capsys.readouterr().err
    assert "Unknown evaluation task 'probes'" in err and "valid tasks: retrieval" in err
    assert main(["eval", "--ckpt", ckpt, "--splits", "train"]) == 2
    assert "valid: val, test" in capsys.readouterr().err


def test_training_logged_the_periodic_evaluation(trained_run: Path) -> None:
    """The trained run evaluates every 200 steps (retrieval + short zero-shot on val)."""
    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert "val/zeroshot_short/AUROC" in scalars and "val/zeroshot_short/AUPRC" in scalars, sorted(scalars)
    # Step 0 holds the final metrics of the HParams tab (fit's evaluation.final_tasks).
    assert [e.step for e in events.Scalars("val/zeroshot_short/AUROC") if e.step > 0] == [200, 400]


def test_probes_over_the_feature_cache_budget_train_all_20_with_the_encoder_in_the_loop(
    trained_run: Path, tmp_path: Path, one_torch_thread
) -> None:
    """A budget no token fits: ctvlp eval trains the whole grid on encoder forwards and says so in
    results.json, probe_selection.json and the log."""
    out = tmp_path / "eval"
    with one_torch_thread():
        code = main(
            [
                "eval",
                "--ckpt",
                str(trained_run / "checkpoints" / "last.ckpt"),
                "--out",
                str(out),
                "--no-progress",
                "--tasks",
                "probe",
                "--splits",
                "test",
                "evaluation.feature_cache_gb=1e-9",
                "evaluation.probe_steps=20",
                "evaluation.bootstrap_resamples=0",
            ]
        )
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["val/probe/encoder_in_loop"] == 1.0 and results["val/probe/probes"] == 20.0
    assert 0.0 <= results["test/probe/AUROC"] <= 1.0
    selection = json.loads((out / "probe_selection.json").read_text(encoding="utf-8"))
    assert selection["path"] == "encoder in the loop" and len(selection["val_AUPRC"]) == 20
    log_text = (out / "eval.log").read_text(encoding="utf-8")
    assert "train with the frozen encoder in the loop" in log_text
    assert "Joint probe training (encoder in the loop): 20/20 steps" in log_text
