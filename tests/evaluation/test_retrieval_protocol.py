"""COLIPRI's retrieval set (App. C.1): the split's pairs minus the non-chest scans CT-RATE lists in
``no_chest_valid.txt``, de-duplicated by Findings; the counts land in the results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from datamodules.phantom.ct_rate_writer import PhantomSummary, write_phantom_ct_rate
from datamodules.sources.ct_rate import non_chest_scans, scan_ct_rate
from evaluation.probes import ProbeTraining
from evaluation.retrieval import RetrievalPairs, retrieval_pairs
from evaluation.runner import EvalSettings, EvalSplit, Evaluator

LABELS = ["alpha", "beta", "gamma"]


def test_pairs_drop_listed_scans_then_repeated_findings() -> None:
    ids = ["v_1", "v_2", "v_3", "v_4", "v_5", "v_6"]
    findings = ["A.", "B.", " A. ", "C.", "B.", "D."]
    pairs = retrieval_pairs(ids, findings, non_chest={"v_4"}, non_chest_before=3)
    # v_3 repeats v_1 (up to whitespace) and v_5 repeats v_2; the first of each is kept.
    assert pairs.image_ids == ("v_1", "v_2", "v_6")
    assert (pairs.reports, pairs.non_chest, pairs.duplicates, pairs.pairs) == (9, 4, 2, 3)
    assert pairs.describe() == (
        "9 reports -> 5 without 4 non-chest scans -> 3 pairs without 2 duplicate Findings"
    )
    # A listed scan is removed before de-duplication: its Findings do not shadow a later pair.
    assert retrieval_pairs(["a", "b"], ["X.", "X."], non_chest={"a"}).image_ids == ("b",)
    with pytest.raises(ValueError, match="unique"):
        retrieval_pairs(["a", "a"], ["X.", "Y."])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomSummary]:
    root = tmp_path_factory.mktemp("retrieval_protocol") / "ct_rate"
    return root, write_phantom_ct_rate(root, n=40, seed=0, workers=2, progress=False)


def _test_split(root: Path) -> list[Any]:
    return [r for r in scan_ct_rate(root).records if r.split == "test"]


def _protocol(root: Path, records: list[Any]) -> RetrievalPairs:
    non_chest = non_chest_scans(root, [r.id for r in records])
    return retrieval_pairs(
        [r.id for r in records],
        [r.sections["findings"] for r in records],
        non_chest.in_split,
        non_chest.before,
    )


def test_phantom_counts(phantom: tuple[Path, PhantomSummary]) -> None:
    root, summary = phantom
    listed = (root / "no_chest_valid.txt").read_text(encoding="utf-8").split()
    assert len(listed) == 2  # the phantom's validation head CTs
    assert summary.n_duplicate_findings >= 2
    records = _test_split(root)  # the data layer already left the listed head CTs out
    pairs = _protocol(root, records)
    assert pairs.non_chest == 2 and pairs.reports == len(records) + 2
    reports = pd.read_csv(root / "radiology_text_reports/validation_reports.csv")
    chest = reports[~reports["VolumeName"].isin(listed)]
    findings = chest.set_index("VolumeName")["Findings_EN"]
    kept = findings[[f"{i}.nii.gz" for i in (r.id for r in records)]]
    assert pairs.duplicates == len(kept) - kept.nunique() == summary.n_duplicate_findings
    assert pairs.pairs == len(records) - pairs.duplicates
    assert len({r.sections["findings"] for r in records if r.id in pairs.image_ids}) == pairs.pairs


def test_a_cache_built_without_the_list_gives_the_same_pairs(
    phantom: tuple[Path, PhantomSummary], tmp_path: Path
) -> None:
    """Scanned without the list, the head CTs are in the split; the protocol removes them there."""
    root, _ = phantom
    expected = _protocol(root, _test_split(root))
    listed = root / "no_chest_valid.txt"
    text = listed.read_text(encoding="utf-8")
    try:
        listed.write_text("", encoding="utf-8")
        records = _test_split(root)
    finally:
        listed.write_text(text, encoding="utf-8")
    assert len(records) == expected.reports
    pairs = _protocol(root, records)
    assert pairs == expected


def test_evaluator_ranks_only_the_pairs_and_records_the_counts(
    toy_data: Any, toy_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EvalSettings(
        tasks=["retrieval"], probe=ProbeTraining(10, 8, 0), bootstrap_resamples=20, input_size=2
    )
    ids = [f"vol{i}" for i in range(40)]
    pairs = retrieval_pairs(
        ids, [f"report {i // 2}" for i in range(40)], non_chest={"vol0"}, non_chest_before=1
    )
    assert pairs.pairs == 20 and pairs.duplicates == 19 and pairs.non_chest == 2
    evaluator = Evaluator(toy_model, toy_data.registry.tokenize, LABELS, settings)
    splits = [
        EvalSplit("test", toy_data.batches("test"), 40, retrieval=pairs),
        EvalSplit("val", toy_data.batches("val"), 40),
    ]
    with caplog.at_level(logging.INFO, logger="evaluation.runner"):
        results = evaluator.run(None, splits).results
    assert results["test/retrieval/R@1_chance"] == pytest.approx(1 / 20)
    assert results["val/retrieval/R@1_chance"] == pytest.approx(1 / 40)
    counts = {
        k: results[f"test/retrieval/{k}"] for k in ("reports", "non_chest_removed", "duplicates_removed")
    }
    assert counts == {"reports": 41.0, "non_chest_removed": 2.0, "duplicates_removed": 19.0}
    assert results["test/retrieval/pairs"] == 20.0 and "val/retrieval/pairs" not in results
    assert "41 reports -> 39 without 2 non-chest scans -> 20 pairs" in caplog.text
    # Every pair kept: the same numbers as ranking the whole split.
    whole = retrieval_pairs(ids, ids)
    again = evaluator.run(None, [EvalSplit("val", toy_data.batches("val"), 40, retrieval=whole)]).results
    assert again["val/retrieval/R@1"] == results["val/retrieval/R@1"]
    missing = retrieval_pairs(["vol0", "nope"], ["a", "b"])
    with pytest.raises(ValueError, match="lacks"):
        evaluator.run(None, [EvalSplit("val", toy_data.batches("val"), 40, retrieval=missing)])
