"""The evaluation runner on a toy model: tasks x splits, validation-only fitting, transfer splits."""

from __future__ import annotations

from typing import Any

import pytest

from ctvlp.config.evaluation_tasks import parse_tasks
from evaluation.metrics import f1_optimal_thresholds
from evaluation.probes import ProbeTraining
from evaluation.runner import EvalSettings, EvalSplit, Evaluator, TrainSplit
from evaluation.zero_shot import short_class_prompts, zero_shot_scores

LABELS = ["alpha", "beta", "gamma"]


def test_parse_tasks_expands_zeroshot_and_lists_valid_names() -> None:
    assert parse_tasks("probe,zeroshot") == ["zeroshot_native", "zeroshot_short", "probe"]
    assert parse_tasks(["retrieval", "zeroshot_short"]) == ["retrieval", "zeroshot_short"]
    with pytest.raises(
        ValueError,
        match="valid tasks: retrieval, zeroshot_native, zeroshot_short, zeroshot_prompts, probe, zeroshot",
    ):
        parse_tasks("retrieval,probes")


def _evaluate(data: Any, model: Any, tasks: str, transfer_labels: list[str] | None = None) -> Any:
    settings = EvalSettings(
        tasks=parse_tasks(tasks),
        probe=ProbeTraining(steps=150, batch_size=16, seed=0),
        probe_heads=2,
        bootstrap_resamples=50,
        input_size=2,
    )
    evaluator = Evaluator(model, data.registry.tokenize, LABELS, settings)

    def split(name: str) -> EvalSplit:
        return EvalSplit(name, data.batches(name), 40)

    splits = [split("val"), split("test")]
    if transfer_labels is not None:
        # A transfer dataset with its own label columns (here: the test volumes, two labels).
        columns = [LABELS.index(n) if n in LABELS else 0 for n in transfer_labels]
        batches = [{**b, "labels": b["labels"][:, columns]} for b in data.batches("test")]
        splits.append(EvalSplit("transfer", batches, 40, label_names=transfer_labels, has_reports=False))
    train = data.splits["train"]
    train_split = TrainSplit(train["reports"], train["labels"], data.batches("train"), 60)
    return evaluator.run(split("val"), splits, train_split)


def test_all_tasks_on_val_test_and_a_transfer_split(toy_data: Any, toy_model: Any) -> None:
    output = _evaluate(toy_data, toy_model, "retrieval,zeroshot,probe", transfer_labels=["gamma", "alpha"])
    results = output.results
    for split in ("val", "test"):
        assert results[f"{split}/retrieval/R@1"] > results[f"{split}/retrieval/R@1_chance"]
        for k in (1, 5, 10):
            value = results[f"{split}/retrieval/R@{k}"]
            low, high = (
                results[f"{split}/retrieval/R@{k}_ci_low"],
                results[f"{split}/retrieval/R@{k}_ci_high"],
            )
            assert low <= value <= high
        for task in ("zeroshot_native", "zeroshot_short", "probe"):
            for metric in ("AUROC", "AUPRC", "BA", "F1", "F1_weighted"):
                value = results[f"{split}/{task}/{metric}"]
                low, high = (
                    results[f"{split}/{task}/{metric}_ci_low"],
                    results[f"{split}/{task}/{metric}_ci_high"],
                )
                assert low <= high and 0 <= value <= 1
    assert all(len(key.split("/")) == 3 for key in results)
    # The toy volumes carry their labels in the voxels: every protocol finds them.
    assert results["test/probe/AUROC"] > 0.9
    assert results["test/zeroshot_short/AUROC"] > 0.9
    assert results["test/zeroshot_native/AUROC"] > 0.9
    # Transfer: scored on its own two labels, no retrieval (no reports).
    assert results["transfer/probe/AUROC"] > 0.9
    assert not any(key.startswith("transfer/retrieval") for key in results)
    assert set(output.per_label["transfer/probe/AUROC"]) == {"gamma", "alpha"}
    assert set(output.per_label["test/probe/AUROC"]) == set(LABELS)
    details = output.details["probe"]
    assert len(details["val_AUPRC"]) == 20 and details["selected"] in details["val_AUPRC"]
    assert details["val_AUPRC"][details["selected"]] == max(details["val_AUPRC"].values())


def test_thresholds_are_fitted_on_validation_only(toy_data: Any, toy_model: Any) -> None:
    output = _evaluate(toy_data, toy_model, "zeroshot_short")
    assert "test/zeroshot_short/threshold" not in output.per_label
    fitted = output.per_label["val/zeroshot_short/threshold"]
    # The same thresholds, recomputed by hand from validation scores.
    prompts = short_class_prompts(
        LABELS, lambda texts: toy_model.encode_text(**toy_data.registry.tokenize(texts))
    )
    val_scores = zero_shot_scores(toy_data.splits["val"]["images"].flatten(1), prompts)
    expected = f1_optimal_thresholds(val_scores, toy_data.splits["val"]["labels"])
    assert [fitted[n] for n in LABELS] == pytest.approx(expected.tolist())


def test_transfer_labels_outside_the_label_space_are_rejected(toy_data: Any, toy_model: Any) -> None:
    with pytest.raises(ValueError, match="outside the model's label space"):
        _evaluate(toy_data, toy_model, "probe", transfer_labels=["alpha", "delta"])


def test_classification_without_validation_is_rejected(toy_model: Any) -> None:
    evaluator = Evaluator(toy_model, lambda texts: {}, LABELS, EvalSettings(tasks=["zeroshot_short"]))
    with pytest.raises(ValueError, match="validation split"):
        evaluator.run(None, [EvalSplit("test", [], 0)])


def test_probes_over_the_token_budget_train_all_20_with_the_encoder_in_the_loop(
    toy_data: Any, toy_model: Any
) -> None:
    """A token budget of one byte: the grid keeps its 20 probes, trained on encoder forwards of the
    same batch stream, and selects the probe the cached path selects."""

    def evaluate(budget: int) -> Any:
        settings = EvalSettings(
            tasks=["probe"],
            probe=ProbeTraining(150, 16, 0),
            probe_heads=2,
            bootstrap_resamples=0,
            input_size=2,
        )
        settings.feature_cache_bytes = budget
        evaluator = Evaluator(toy_model, toy_data.registry.tokenize, LABELS, settings, progress=False)
        val, test = (
            EvalSplit("val", toy_data.loader("val"), 40),
            EvalSplit("test", toy_data.loader("test"), 40),
        )
        train = toy_data.splits["train"]
        return evaluator.run(
            val, [val, test], TrainSplit(train["reports"], train["labels"], toy_data.loader("train"), 60)
        )

    cached = evaluate(2**30)
    calls = toy_model.image_encoder.calls
    assert calls == 60 + 40 + 40  # one pass per volume
    joint = evaluate(1)
    # 150 steps of 16 volumes, the embeddings of val and test, and their probe predictions.
    assert toy_model.image_encoder.calls - calls == 150 * 16 + 2 * (40 + 40)
    assert (cached.details["probe"]["path"], joint.details["probe"]["path"]) == (
        "cached tokens",
        "encoder in the loop",
    )
    assert (cached.results["val/probe/encoder_in_loop"], joint.results["val/probe/encoder_in_loop"]) == (
        0.0,
        1.0,
    )
    assert joint.results["val/probe/probes"] == cached.results["val/probe/probes"] == 20.0
    assert len(joint.details["probe"]["val_AUPRC"]) == 20
    assert joint.details["probe"]["selected"] == cached.details["probe"]["selected"]
    for name, value in cached.details["probe"]["val_AUPRC"].items():
        assert joint.details["probe"]["val_AUPRC"][name] == pytest.approx(value, abs=1e-4)
    assert joint.results["test/probe/AUROC"] == pytest.approx(cached.results["test/probe/AUROC"], abs=1e-4)
    assert joint.results["test/probe/AUROC"] > 0.9  # learned, not only run


def test_joint_probes_need_a_dataloader_to_draw_their_batches(toy_data: Any, toy_model: Any) -> None:
    settings = EvalSettings(
        tasks=["probe"], probe=ProbeTraining(5, 4, 0), probe_heads=2, bootstrap_resamples=0, input_size=2
    )
    settings.feature_cache_bytes = 1
    evaluator = Evaluator(toy_model, toy_data.registry.tokenize, LABELS, settings, progress=False)
    val = EvalSplit("val", toy_data.batches("val"), 40)
    train = toy_data.splits["train"]
    with pytest.raises(TypeError, match="must be a torch DataLoader"):
        evaluator.run(
            val, [val], TrainSplit(train["reports"], train["labels"], toy_data.batches("train"), 60)
        )
