import json
from collections import Counter

import pytest

from datamodules.report_sections import (
    DEFAULT_SECTION,
    SECTION_NAMES,
    assign_sections,
    canonical_section_name,
    load_structured_sections,
    report_sections,
)
from datamodules.text import split_sentences

# CT-RATE-style Findings sentences and the section a radiologist would file them under.
EXPECTED = {
    "Trachea and both main bronchi are in the midline and open.": "Lungs and Airways",
    "Mediastinal main vascular structures, heart contour, size are normal.": "Cardiovascular Structures",
    "Thoracic aorta diameter is normal.": "Cardiovascular Structures",
    "Pericardial effusion-thickening was not observed.": "Cardiovascular Structures",
    "Calcified atherosclerotic plaques are observed in the coronary arteries.": "Cardiovascular Structures",
    "Thoracic esophagus calibration was normal and no significant tumoral wall thickening was detected.": (
        "Mediastinum and Hila"
    ),
    "No lymph node was detected in mediastinal and bilateral hilar pathological size.": "Mediastinum and Hila",
    "A small hiatal hernia containing part of the stomach is observed.": "Mediastinum and Hila",
    "No pleural effusion was detected.": "Pleura",
    "Right pleural effusion and passive atelectasis in the adjacent lung parenchyma.": "Pleura",
    "A 4 mm subpleural nodule is observed in the right lung upper lobe.": "Lungs and Airways",
    "Emphysematous changes are observed in both lungs.": "Lungs and Airways",
    "A soft tissue density lesion is seen in the left lung lower lobe.": "Lungs and Airways",
    "Upper abdominal organs included in the sections are normal.": "Upper Abdomen",
    "The liver and spleen are of normal size.": "Upper Abdomen",
    "Bilateral adrenal glands were normal and no space-occupying lesion was detected.": "Upper Abdomen",
    "No lytic-destructive lesions were detected in the bone structures within the sections.": (
        "Bones and Soft Tissues"
    ),
    "Degenerative changes are observed in the thoracic vertebrae.": "Bones and Soft Tissues",
    "Old fracture of the left 7th rib.": "Bones and Soft Tissues",
    "A central venous catheter is seen, its tip in the superior vena cava.": "Tubes Lines and Devices",
    "Pacemaker leads are seen in the right heart cavities.": "Tubes Lines and Devices",
    "Since the examination was non-contrast, mediastinal structures could not be evaluated optimally.": (
        "Image Quality"
    ),
    "Motion artifacts limit the evaluation.": "Image Quality",
    "No mass or infiltrative lesion was detected.": DEFAULT_SECTION,
}


@pytest.mark.parametrize(("sentence", "section"), list(EXPECTED.items()))
def test_ct_rate_sentences_land_in_expected_section(sentence, section):
    sections = assign_sections(sentence)
    assert sections[section] == [sentence]


def test_every_sentence_in_exactly_one_section_content_preserved():
    findings = " ".join(EXPECTED)
    sections = assign_sections(findings)
    assert tuple(sections) == SECTION_NAMES
    assigned = [s for sentences in sections.values() for s in sentences]
    assert Counter(assigned) == Counter(split_sentences(findings))
    assert len(assigned) == len(EXPECTED)


def test_within_section_order_kept_and_empty_report():
    sections = assign_sections("Right lung nodule. Heart size normal. Left lung nodule.")
    assert sections["Lungs and Airways"] == ["Right lung nodule.", "Left lung nodule."]
    assert assign_sections("") == {name: [] for name in SECTION_NAMES}


def test_short_keywords_need_word_boundaries():
    # "rib" in "distribution", "port" in "support" must not trigger bones / devices.
    assert assign_sections("Nodules with a peribronchovascular distribution.")["Lungs and Airways"]
    assert assign_sections("Findings support infection in the lung.")["Lungs and Airways"]


def test_load_structured_sections(tmp_path):
    path = tmp_path / "sections.json"
    data = {
        "train_1_a_1.nii.gz": {"Pleura": ["No effusion."], "tubes, lines, and devices": []},
        "train_2_a_1": {"Lungs and Airways": ["Nodule."]},
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    loaded = load_structured_sections(path)
    assert set(loaded) == {"train_1_a_1", "train_2_a_1"}
    assert tuple(loaded["train_1_a_1"]) == SECTION_NAMES
    assert loaded["train_1_a_1"]["Pleura"] == ["No effusion."]
    assert loaded["train_2_a_1"]["Lungs and Airways"] == ["Nodule."]
    assert report_sections("train_2_a_1.nii.gz", "Heart normal.", loaded)["Lungs and Airways"] == ["Nodule."]
    assert report_sections("other", "Heart normal.", loaded)["Cardiovascular Structures"] == ["Heart normal."]


def test_unknown_section_error_names_valid_ones(tmp_path):
    path = tmp_path / "sections.json"
    path.write_text(json.dumps({"v": {"Lungs": ["x."]}}), encoding="utf-8")
    with pytest.raises(ValueError, match="Unknown report section 'Lungs'.*Lungs and Airways.*Upper Abdomen"):
        load_structured_sections(path)
    path.write_text(json.dumps({"v": {"Pleura": "not a list"}}), encoding="utf-8")
    with pytest.raises(ValueError, match="list of strings"):
        load_structured_sections(path)
    path.write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        load_structured_sections(path)
    assert canonical_section_name("  mediastinum AND hila ") == "Mediastinum and Hila"
