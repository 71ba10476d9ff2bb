"""The rule-based CT report labeller: real-report phrasings (negation, uncertainty, overlapping
vocabularies) asserted label by label, and agreement with a small phantom CT-RATE's labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_fscore_support

from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate
from datamodules.phantom.reports import _NEGATIVE
from datamodules.report_labeller import (
    ABSENT,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    VOCABULARY,
    classify_report,
    label_report,
    label_reports,
    split_clauses,
)
from datamodules.sources.ct_rate import SPLIT_LAYOUTS

PHANTOM_N = 60


def _only(*positive: str) -> dict[str, int]:
    unknown = set(positive) - set(CT_RATE_LABELS)
    assert not unknown, unknown
    return {name: int(name in positive) for name in CT_RATE_LABELS}


# Phrasings in the style of CT-RATE's reports that the phantom does not write -> the positive labels.
CASES: list[tuple[str, tuple[str, ...]]] = [
    # Negations.
    ("No pleural or pericardial effusion was detected.", ()),
    ("Neither pleural nor pericardial effusion.", ()),
    ("There is no evidence of consolidation.", ()),
    ("Heart size is normal.", ()),
    ("Heart size is not increased.", ()),
    ("Mediastinal main vascular structures, heart contour, size are normal.", ()),
    ("Pericardial effusion-thickening was not observed.", ()),
    ("No pleural effusion-thickening was detected.", ()),
    (
        "No enlarged lymph nodes in pathological size and appearance were detected in the mediastinum "
        "and hilar regions.",
        (),
    ),
    ("Interlobular septal thickening was not observed.", ()),
    ("Free of pleural effusion.", ()),
    ("Absence of hiatal hernia.", ()),
    ("Negative for bronchiectasis.", ()),
    ("Atelectatic changes have resolved.", ()),
    ("Lymph nodes not reaching pathological size are seen in the mediastinum.", ()),
    ("Trachea and both main bronchi are open. No occlusive pathology was detected.", ()),
    ("No mosaic attenuation, no peribronchial thickening.", ()),
    # Uncertainty: scored positive by default.
    ("Atelectasis cannot be excluded.", ("Atelectasis",)),
    ("Consolidation can not be ruled out in the left lower lobe.", ("Consolidation",)),
    ("Possible small pericardial effusion.", ("Pericardial effusion",)),
    ("Findings suspicious for early fibrotic changes.", ("Pulmonary fibrotic sequela",)),
    ("Atelectasis is likely.", ("Atelectasis",)),
    # Overlapping vocabularies.
    ("Coronary artery calcification is observed.", ("Coronary artery wall calcification",)),
    ("Atherosclerotic changes in the coronary arteries.", ("Coronary artery wall calcification",)),
    (
        "Calcific atheroma plaques are observed in the aorta and coronary arteries.",
        ("Arterial wall calcification", "Coronary artery wall calcification"),
    ),
    (
        "No coronary calcification but calcified plaques in the aortic arch.",
        ("Arterial wall calcification",),
    ),
    (
        "The aorta shows calcified plaques, no coronary artery calcification.",
        ("Arterial wall calcification",),
    ),
    ("Mild atherosclerotic changes.", ("Arterial wall calcification",)),
    ("Aortic valve calcification is noted.", ()),
    ("Calcified lymph node in the aortopulmonary window.", ()),
    ("There is a pericardial effusion of 8 mm.", ("Pericardial effusion",)),
    ("Pleural and pericardial effusion is present.", ("Pleural effusion", "Pericardial effusion")),
    ("Enlarged mediastinal lymph nodes with a nodular contour.", ("Lymphadenopathy",)),
    ("Lymph nodes with a short axis below 10 mm were observed in the mediastinum.", ()),
    (
        "Several lymph nodes, the largest with a short axis of 12 mm, in the subcarinal station.",
        ("Lymphadenopathy",),
    ),
    ("A lymph node with a short axis of 8 mm in the prevascular region.", ()),
    ("Thyroid nodule of 12 mm in the right lobe.", ()),
    ("Nodular opacity in the left upper lobe.", ("Lung nodule",)),
    ("Peribronchial thickening is observed in both lungs.", ("Peribronchial thickening",)),
    ("Septal thickening is observed in both lungs.", ("Interlobular septal thickening",)),
    ("Thickening of the interventricular septum.", ()),
    ("Subcutaneous emphysema in the left chest wall.", ()),
    (
        "Septal thickening and bronchiectasis in the lower lobes.",
        ("Interlobular septal thickening", "Bronchiectasis"),
    ),
    # Several findings in one sentence, and findings on either side of a negated one.
    (
        "There are ground glass areas and consolidations in both lungs, more prominent in the lower lobes.",
        ("Lung opacity", "Consolidation"),
    ),
    (
        "Bilateral pleural effusion, more on the left, with adjacent compressive atelectasis.",
        ("Pleural effusion", "Atelectasis"),
    ),
    ("There is cardiomegaly, no pericardial effusion.", ("Cardiomegaly",)),
    ("No pleural effusion is seen, atelectasis in the left lower lobe.", ("Atelectasis",)),
    ("The heart is not enlarged and there is a pericardial effusion.", ("Pericardial effusion",)),
    ("No nodule or consolidation; ground-glass opacity in the right upper lobe.", ("Lung opacity",)),
    (
        "Pulmonary fibrosis with honeycombing and traction bronchiectasis in both lower lobes.",
        ("Pulmonary fibrotic sequela", "Bronchiectasis"),
    ),
    (
        "Sequelae fibrotic changes and fibroatelectasis in the lingula, mosaic attenuation in both lungs.",
        ("Pulmonary fibrotic sequela", "Mosaic attenuation pattern"),
    ),
    # Devices.
    ("A port catheter is observed in the right subclavian vein.", ("Medical material",)),
    ("Sternotomy and mediastinal surgical clips are present.", ("Medical material",)),
    ("Endotracheal tube in place. No pneumothorax.", ("Medical material",)),
    ("Findings compatible with tuberculosis sequelae.", ("Pulmonary fibrotic sequela",)),
    # Case and punctuation.
    ("NO PLEURAL EFFUSION. CARDIOMEGALY.", ("Cardiomegaly",)),
    # A full stop glued to the next sentence still ends the reach of "No".
    ("No hiatal hernia.Mild cardiomegaly", ("Cardiomegaly",)),
    ("Emphysema is not observed.Hiatal hernia is present.", ("Hiatal hernia",)),
    ("Cardiothoracic ratio is increased; no effusion in the pleural spaces.", ("Cardiomegaly",)),
    ("Heart size increased. Bronchiectatic changes in both lungs.", ("Cardiomegaly", "Bronchiectasis")),
]


@pytest.mark.parametrize(("text", "positive"), CASES, ids=[c[0][:50] for c in CASES])
def test_report_phrasings(text: str, positive: tuple[str, ...]) -> None:
    assert label_report(text) == _only(*positive)


def test_uncertain_scoring_is_a_choice() -> None:
    text = "Atelectasis cannot be excluded. Possible consolidation? No pleural effusion."
    states = classify_report(text)
    assert states["Atelectasis"] == UNCERTAIN
    assert states["Consolidation"] == UNCERTAIN
    assert states["Pleural effusion"] == NEGATIVE
    assert states["Emphysema"] == ABSENT
    assert label_report(text) == _only("Atelectasis", "Consolidation")
    assert label_report(text, uncertain_as_positive=False) == _only()


def test_nearest_cue_decides() -> None:
    states = classify_report("No consolidation, possibly atelectasis in the left lower lobe.")
    assert (states["Consolidation"], states["Atelectasis"]) == (NEGATIVE, UNCERTAIN)
    states = classify_report("Possible atelectasis, no consolidation.")
    assert (states["Consolidation"], states["Atelectasis"]) == (NEGATIVE, UNCERTAIN)
    # A hedge after a comma qualifies what follows it, not the finding before it.
    assert classify_report("Nodule in the right upper lobe, likely granuloma.")["Lung nodule"] == POSITIVE


def test_positive_beats_negative_across_sentences() -> None:
    text = "No new nodule. A stable 4 mm nodule in the right upper lobe."
    assert classify_report(text)["Lung nodule"] == POSITIVE


def test_clauses() -> None:
    assert split_clauses("No effusion; mild cardiomegaly but no nodule. Atelectasis?") == [
        "no effusion",
        "mild cardiomegaly",
        "no nodule.",
        "atelectasis?",
    ]


def test_phantom_negative_sentences_are_negative() -> None:
    """Every negative sentence the phantom writes names no other label, and negates its own label
    when it names it at all ("Pleural spaces are clear." names none)."""
    for label, (sentences, short) in _NEGATIVE.items():
        for sentence in [*sentences, short]:
            states = classify_report(sentence)
            assert states[label] in (NEGATIVE, ABSENT), (sentence, states[label])
            assert {k for k, v in states.items() if v != ABSENT} <= {label}, sentence


def test_label_reports_array() -> None:
    texts = ["Mild cardiomegaly.", "", None, math.nan, "No emphysema. Bronchiectasis."]
    out = label_reports(texts)
    assert out.shape == (5, 18)
    assert out.dtype == np.int64
    assert out[0].tolist() == [int(n == "Cardiomegaly") for n in CT_RATE_LABELS]
    assert out[1:4].sum() == 0
    assert out[4].tolist() == [int(n == "Bronchiectasis") for n in CT_RATE_LABELS]
    assert list(VOCABULARY) == CT_RATE_LABELS


@pytest.fixture(scope="module")
def phantom_valid(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The phantom's 'valid' split: Findings_EN and the 18 labels, head CTs dropped."""
    root = tmp_path_factory.mktemp("labeller") / "ct_rate"
    write_phantom_ct_rate(root, n=PHANTOM_N, seed=0, workers=1, progress=False)
    layout = next(layout for layout in SPLIT_LAYOUTS if layout.prefix == "valid")
    reports = pd.read_csv(Path(root) / layout.reports)
    labels = pd.read_csv(Path(root) / layout.labels)
    heads = set((Path(root) / layout.no_chest).read_text(encoding="utf-8").split())
    frame = reports.merge(labels, on="VolumeName", how="inner", validate="one_to_one")
    return frame[~frame["VolumeName"].isin(heads)].reset_index(drop=True)


def test_phantom_agreement(phantom_valid: pd.DataFrame) -> None:
    truth = phantom_valid[CT_RATE_LABELS].to_numpy().astype(int)
    predicted = label_reports(phantom_valid["Findings_EN"].tolist())
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average=None, zero_division=0
    )
    present = [i for i in range(len(CT_RATE_LABELS)) if truth[:, i].any()]
    for i, name in enumerate(CT_RATE_LABELS):
        print(
            f"{name:36s} P={precision[i]:.3f} R={recall[i]:.3f} F1={f1[i]:.3f} positives={truth[:, i].sum()}"
        )
    macro = float(np.mean(f1[present]))
    print(f"{len(truth)} reports, macro-F1 over the {len(present)} labels present: {macro:.3f}")
    assert len(truth) >= 5 and len(present) >= 5
    assert macro >= 0.95
    # Labels the phantom never draws must not be invented from its negative sentences.
    absent = [i for i in range(len(CT_RATE_LABELS)) if not truth[:, i].any()]
    assert predicted[:, absent].sum() == 0
