"""Uniferum task construction: texts, label tables, balanced per-epoch draws, unknown labels."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from datamodules.labels import CT_RATE_LABELS, MERLIN_LABELS, RAD_CHESTCT_LABELS
from datamodules.totalseg import UNIFERUM_PAPER_ORGANS
from datamodules.uniferum_tasks import (
    CT_RATE_FINDINGS,
    DIAGNOSIS,
    MERLIN_FINDINGS,
    PROGNOSIS,
    RAD_CHESTCT_FINDINGS,
    SEGMENTATION,
    TaskSampler,
    build_tasks,
    task_label,
)

NAN = math.nan


def test_label_tables_cover_the_datasets() -> None:
    assert list(CT_RATE_FINDINGS) == CT_RATE_LABELS  # all 18, in column order
    assert set(MERLIN_FINDINGS) == set(MERLIN_LABELS)  # all 30
    assert len(RAD_CHESTCT_FINDINGS) == 39  # the paper's 7 shared + 32 unique
    assert set(RAD_CHESTCT_FINDINGS) <= set(RAD_CHESTCT_LABELS)


def test_task_texts_follow_the_templates() -> None:
    tasks = build_tasks(
        {"ct_rate": CT_RATE_LABELS, "inspect": ["12_month_mortality", "pe_positive", "pe_location"]}
    )
    by_name = {t.name: t for t in tasks}
    assert by_name["pleural_effusion"].text == "Diagnose the presence of pleural effusion around the lungs"
    assert by_name["cardiomegaly"].text == "Diagnose the presence of cardiomegaly in the heart"
    assert by_name["mortality_12_months"].kind == PROGNOSIS
    assert by_name["mortality_12_months"].text == "Predict the risk of mortality in 12 months"
    pe = by_name["pulmonary_embolism"]
    assert pe.text == "Diagnose the presence of pulmonary embolism in the pulmonary arteries"
    assert pe.kind == DIAGNOSIS and pe.columns == {"inspect": 1}
    assert "pe_location" not in by_name  # not in any table: no task
    assert by_name["lungs"].kind == SEGMENTATION and by_name["lungs"].text == "Segment lungs in the image."
    assert sum(t.kind == DIAGNOSIS for t in tasks) == 19  # CT-RATE's 18 and INSPECT's PE


def test_shared_labels_of_several_sources_are_one_task() -> None:
    tasks = build_tasks(
        {"ct_rate": CT_RATE_LABELS, "merlin": MERLIN_LABELS, "rad_chestct": RAD_CHESTCT_LABELS}
    )
    cardiomegaly = [t for t in tasks if t.name == "cardiomegaly"]
    assert len(cardiomegaly) == 1
    assert set(cardiomegaly[0].columns) == {"ct_rate", "merlin", "rad_chestct"}
    assert len({t.text for t in tasks}) == len(tasks)


def test_held_out_and_custom_texts() -> None:
    tasks = build_tasks({"ct_rate": CT_RATE_LABELS}, held_out=["Pericardial effusion"],
                        texts={"Pericardial effusion": "Diagnose fluid around the heart"})  # fmt: skip
    held = [t for t in tasks if t.held_out]
    assert [(t.name, t.text) for t in held] == [("pericardial_effusion", "Diagnose fluid around the heart")]
    with pytest.raises(ValueError, match="not labels"):
        build_tasks({"ct_rate": CT_RATE_LABELS}, held_out=["Pneumothorax"])


def _volumes(labels: list[list[float]], organs: list[list[str]] | None = None):
    organs = organs or [[] for _ in labels]
    return [("ct_rate", row + [0.0] * (18 - len(row)), o) for row, o in zip(labels, organs, strict=True)]


def test_balanced_counts_per_task_and_redrawn_every_epoch() -> None:
    rng = np.random.default_rng(0)
    n = 60
    labels = (rng.random((n, 18)) < 0.2).astype(float).tolist()
    organs = [["body", "lungs"] if i % 3 else [] for i in range(n)]
    tasks = build_tasks({"ct_rate": CT_RATE_LABELS})
    sampler = TaskSampler(tasks, _volumes(labels, organs), seg_fraction=0.1, seed=0)
    first, second = sampler.draw(0), sampler.draw(1)
    assert len(first) == len(second) == len(sampler)
    for draw in (first, second):
        for t, task in enumerate(tasks):
            if task.kind == SEGMENTATION:
                continue
            column = t  # the CT-RATE tasks come first, in column order
            n_pos = int(sum(row[column] == 1.0 for row in labels))
            picked = draw.task == t
            assert int((draw.target[picked] == 1).sum()) == n_pos
            assert int((draw.target[picked] == 0).sum()) == min(n_pos, n - n_pos)
            # positives and negatives are the right volumes
            for v, y in zip(draw.volume[picked], draw.target[picked], strict=True):
                assert labels[v][column] == y
        seg = np.isin(draw.task, [t for t, task in enumerate(tasks) if task.kind == SEGMENTATION])
        # 10 % of the dataset's 60 volumes (Sec. 3.3), not of the classification samples
        assert int(seg.sum()) == round(0.1 * n) == sampler.n_segmentation == 6
        assert int((~seg).sum()) != 60
        assert np.isnan(draw.target[seg]).all()
        for v, t in zip(draw.volume[seg], draw.task[seg], strict=True):
            assert tasks[t].organ in organs[v]  # only organs the volume has a mask of
    # the negatives (and the segmentation volumes) are drawn again each epoch
    key = lambda d: sorted(zip(d.task.tolist(), d.volume.tolist(), strict=True))  # noqa: E731
    assert key(first) != key(second)
    assert key(sampler.draw(0)) == key(first)  # a pure function of (seed, epoch)


def test_unknown_labels_never_become_tasks() -> None:
    tasks = build_tasks({"ct_rate": CT_RATE_LABELS})
    # column 2 = Cardiomegaly: known for 4 volumes only; NaN and -1 (Merlin's "not mentioned") are unknown
    rows = [[0, 0, v] for v in (1.0, NAN, 0.0, -1.0, 1.0, NAN, 0.0, -1.0)]
    sampler = TaskSampler(tasks, _volumes(rows), seg_fraction=0.0)
    cardiomegaly = next(t for t, task in enumerate(tasks) if task.name == "cardiomegaly")
    for epoch in range(5):
        draw = sampler.draw(epoch)
        assert not np.isnan(draw.target).any()
        picked = draw.volume[draw.task == cardiomegaly]
        assert Counter(picked.tolist()) == Counter([0, 4, 2, 6])  # 2 positives + the 2 known negatives
    assert math.isnan(task_label([0, 0, -1.0] + [0] * 15, "ct_rate", tasks[cardiomegaly]))
    assert math.isnan(task_label([0] * 18, "merlin", tasks[cardiomegaly]))  # no column in that source


def test_held_out_labels_make_no_training_sample() -> None:
    tasks = build_tasks({"ct_rate": CT_RATE_LABELS}, held_out=["Cardiomegaly"])
    rows = [[0, 0, 1.0], [0, 0, 0.0], [1, 0, 0.0], [0, 0, 1.0]]
    draw = TaskSampler(tasks, _volumes(rows), seg_fraction=0.0).draw(0)
    held = [t for t, task in enumerate(tasks) if task.held_out]
    assert held and not np.isin(draw.task, held).any()
    assert len(draw) > 0


def test_the_paper_organ_list_makes_59_segmentation_tasks_with_the_papers_names() -> None:
    tasks = build_tasks({"ct_rate": CT_RATE_LABELS}, organs=UNIFERUM_PAPER_ORGANS)
    seg = {t.organ: t.text for t in tasks if t.kind == SEGMENTATION}
    assert len(seg) == 59 and len(set(seg.values())) == 59
    assert seg["rib_left_1"] == "Segment left rib 1 in the image."
    assert seg["vertebrae_T12"] == "Segment thoracic vertebra 12 in the image."
    assert seg["lung_middle_lobe_right"] == "Segment right middle pulmonary lobe in the image."
    assert seg["trachea"] == "Segment tracheal airway in the image."
    assert seg["ribs_left"] == "Segment left ribs in the image."
    with pytest.raises(ValueError, match="unknown organ.*'kidneys'"):
        build_tasks({"ct_rate": CT_RATE_LABELS}, organs=["lungs", "kidneys"])
