"""CT-RATE-style English report text for phantom cases.

Findings are written in anatomical order (airways, mediastinum and heart, oesophagus, lungs,
pleura, upper abdomen, bones), with several phrasings per finding. Present findings are stated
with the attributes that were drawn (side, zone, size, count, device, ...); a random subset of
the absent labels get a negative sentence. The shortened findings (the sidecar JSON) hold one
short positive sentence per present finding and one short negative per absent label mentioned.
Each sentence is also assigned one of COLIPRI's eight CapPa sections as it is written
(``Report.sections``): the ground truth that ``ctvlp annotate``'s sections task must reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.findings import Finding
from datamodules.report_sections import SECTION_NAMES


@dataclass
class Report:
    clinical: str
    technique: str
    findings: str
    impressions: str
    positive: list[str] = field(default_factory=list)  # shortened positive findings
    negative: list[str] = field(default_factory=list)  # shortened negative findings
    # The eight CapPa sections -> the Findings sentences in each, in report order.
    sections: dict[str, list[str]] = field(default_factory=dict)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _lobe(side: str, zone: str, rng: np.random.Generator) -> str:
    if side == "bilateral":
        return _pick(rng, [f"both {zone} lobes", f"{zone} lobes of both lungs", f"bilateral {zone} lobes"])
    return _pick(rng, [f"{side} {zone} lobe", f"{zone} lobe of the {side} lung"])


def _lobe_short(side: str, zone: str) -> str:
    return f"bilateral {zone} lobe" if side == "bilateral" else f"{side} {zone} lobe"


_NUMBER = {2: "two", 3: "three"}

# A sentence builder returns (findings sentence, short sentence, impression phrase).
Sentence = tuple[str, str, str]


def _nodule(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    loc = _lobe(a["side"], a["zone"], rng)
    size, dmax, n = a["size"], max(a["diameters_mm"]), a["count"]
    if n == 1:
        text = _pick(
            rng,
            [
                f"A {dmax} mm solid nodule is observed in the {loc}.",
                f"In the {loc}, a {size} solid nodule measuring {dmax} mm was detected.",
                f"There is a {size} nodule of {dmax} mm in the {loc}.",
                f"A nodular lesion {dmax} mm in diameter is present in the {loc}.",
            ],
        )
        short = f"{_cap(size)} {_lobe_short(a['side'], a['zone'])} nodule."
        imp = f"{dmax} mm nodule in the {loc}"
    else:
        text = _pick(
            rng,
            [
                f"Multiple ({n}) {size} solid nodules are observed in the {loc}, the largest measuring {dmax} mm.",
                f"{_cap(_NUMBER[n])} nodules were detected in the {loc}; the largest is {dmax} mm.",
                f"There are {n} {size} nodules in the {loc}, up to {dmax} mm.",
            ],
        )
        short = f"Multiple {size} nodules in the {_lobe_short(a['side'], a['zone'])}."
        imp = f"multiple nodules in the {loc}"
    return text, short, imp


def _pleural(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    amount = (
        _pick(rng, ["small", "minimal"]) if a["size"] == "small" else _pick(rng, ["large", "significant"])
    )
    depth = max(a["depth_mm"])
    if a["side"] == "bilateral":
        text = _pick(
            rng,
            [
                f"Bilateral {amount} pleural effusion is observed, up to {depth} mm thick.",
                f"{_cap(amount)} pleural effusion is present in both hemithoraces.",
                f"Pleural effusion reaching {depth} mm in thickness was detected on both sides.",
            ],
        )
        short, imp = "Bilateral pleural effusion.", f"bilateral {amount} pleural effusion"
    else:
        side = a["side"]
        text = _pick(
            rng,
            [
                f"A {amount} {side} pleural effusion is observed, measuring {depth} mm in thickness.",
                f"Pleural effusion with a thickness of {depth} mm was observed in the {side} hemithorax.",
                f"{_cap(amount)} pleural effusion on the {side}.",
            ],
        )
        short, imp = f"{_cap(side)} pleural effusion.", f"{amount} {side} pleural effusion"
    return text, short, imp


def _cardiomegaly(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    if a["degree"] == "mild":
        text = _pick(
            rng,
            [
                "The heart is mildly enlarged.",
                "Mild cardiomegaly is observed.",
                "Heart size is increased (mild cardiomegaly).",
            ],
        )
        return text, "Mild cardiomegaly.", "mild cardiomegaly"
    text = _pick(
        rng,
        [
            "Marked cardiomegaly is present.",
            "The heart is significantly enlarged.",
            "Heart size is markedly increased.",
        ],
    )
    return text, "Marked cardiomegaly.", "marked cardiomegaly"


def _pericardial(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    t = a["thickness_mm"]
    amount = "small" if t < 16 else "moderate"
    text = _pick(
        rng,
        [
            f"Pericardial effusion reaching {t} mm in thickness is observed.",
            f"A {amount} pericardial effusion with a thickness of {t} mm is noted.",
            f"Pericardial fluid measuring {t} mm was detected.",
        ],
    )
    return text, f"{_cap(amount)} pericardial effusion.", f"{amount} pericardial effusion"


def _emphysema(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    where = "both lungs" if a["side"] == "bilateral" else f"the {a['side']} lung"
    sev = _pick(rng, ["mild", "minimal"]) if a["severity"] == "mild" else _pick(rng, ["severe", "advanced"])
    text = _pick(
        rng,
        [
            f"{_cap(sev)} centrilobular emphysematous changes are observed in the upper lobes of {where}.",
            f"{_cap(sev)} emphysema is present in the upper lobes of {where}.",
            f"Emphysematous areas ({sev}) are seen in the upper zones of {where}.",
        ],
    )
    short_where = "both upper lobes" if a["side"] == "bilateral" else f"the {a['side']} upper lobe"
    return text, f"{_cap(a['severity'])} emphysema in {short_where}.", f"{sev} emphysema in {where}"


def _aortic_calc(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    loc = a["location"]
    if a["extent"] == "few":
        text = _pick(
            rng,
            [
                f"A few calcific atherosclerotic plaques are observed in the wall of the {loc}.",
                f"Mild atherosclerotic calcification of the {loc} wall.",
            ],
        )
    else:
        text = _pick(
            rng,
            [
                f"Extensive calcified atherosclerotic plaques are observed in the {loc}.",
                f"Diffuse atheromatous calcifications in the wall of the {loc}.",
            ],
        )
    return text, f"Calcification of the {loc} wall.", f"atherosclerotic calcification of the {loc}"


_VESSEL_NAME = {"LAD": "left anterior descending", "circumflex": "circumflex", "RCA": "right coronary"}


def _coronary(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    names = [_VESSEL_NAME[v] for v in a["vessels"]]
    vessels = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    plural = "artery" if len(names) == 1 else "arteries"
    text = _pick(
        rng,
        [
            f"Calcific plaques are observed in the {vessels} coronary {plural}.",
            f"Coronary artery calcification involving the {vessels} {plural}.",
        ],
    )
    return (
        text,
        f"Coronary calcification ({', '.join(a['vessels'])}).",
        f"coronary artery calcification ({', '.join(a['vessels'])})",
    )


def _hernia(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    d, size = a["diameter_mm"], a["size"]
    text = _pick(
        rng,
        [
            f"A {size} hiatal hernia with an air-fluid level is observed.",
            f"Hiatal hernia measuring {d} mm is present.",
            f"A {size} sliding hiatal hernia was detected at the oesophagogastric junction.",
        ],
    )
    return text, f"{_cap(size)} hiatal hernia.", f"{size} hiatal hernia"


def _nodes(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    st = a["stations"]
    where = st[0] if len(st) == 1 else ", ".join(st[:-1]) + " and " + st[-1]
    s = a["short_axis_mm"]
    text = _pick(
        rng,
        [
            f"Enlarged lymph nodes are observed in the {where} region, the largest with a short axis of {s} mm.",
            f"Pathologically enlarged {where} lymph nodes up to {s} mm were detected.",
            f"Lymphadenopathy in the {where} station, measuring up to {s} mm in short axis.",
        ],
    )
    kind = "Hilar" if all("hilar" in x for x in st) else "Mediastinal"
    return text, f"{kind} lymphadenopathy ({where}).", f"{where} lymphadenopathy"


def _atelectasis(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    loc = _lobe(a["side"], a["zone"], rng)
    text = _pick(
        rng,
        [
            f"Subsegmental atelectasis is observed in the {loc}.",
            f"Plate-like atelectasis in the {loc}.",
            f"Linear atelectatic changes are seen in the {loc}.",
        ],
    )
    return text, f"Atelectasis in the {_lobe_short(a['side'], a['zone'])}.", f"atelectasis in the {loc}"


def _opacity(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    loc, e = _lobe(a["side"], a["zone"], rng), a["extent_mm"]
    text = _pick(
        rng,
        [
            f"A {a['size']} ground-glass opacity of {e} mm is observed in the {loc}.",
            f"Ground-glass density increase in the {loc}.",
            f"An area of ground-glass opacity measuring {e} mm in the {loc}.",
        ],
    )
    return (
        text,
        f"Ground-glass opacity in the {_lobe_short(a['side'], a['zone'])}.",
        f"ground-glass opacity in the {loc}",
    )


def _consolidation(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    loc, e = _lobe(a["side"], a["zone"], rng), a["extent_mm"]
    text = _pick(
        rng,
        [
            f"Consolidation is present in the {loc}.",
            f"An area of {a['size']} consolidation measuring {e} mm is observed in the {loc}.",
            f"Consolidative density increase in the {loc}, approximately {e} mm.",
        ],
    )
    return text, f"{_cap(_lobe_short(a['side'], a['zone']))} consolidation.", f"consolidation in the {loc}"


_DEVICE_TEXT = {
    "central venous catheter": (
        [
            "A central venous catheter is observed, with its tip in the right atrium.",
            "Central venous catheter in place via the right jugular vein.",
        ],
        "Central venous catheter.",
    ),
    "pacemaker": (
        [
            "A pacemaker generator is observed in the left pectoral region, with its lead extending to the right ventricle.",
            "Cardiac pacemaker with a lead in the right ventricle.",
        ],
        "Pacemaker.",
    ),
    "sternotomy wires": (
        [
            "Sternotomy wires are observed, consistent with previous cardiac surgery.",
            "Median sternotomy wires are present.",
        ],
        "Sternotomy wires.",
    ),
    "nasogastric tube": (
        [
            "A nasogastric tube is observed, with its tip in the stomach.",
            "Nasogastric tube coursing through the oesophagus into the stomach.",
        ],
        "Nasogastric tube.",
    ),
}


def _device(a: dict[str, Any], rng: np.random.Generator) -> Sentence:
    options, short = _DEVICE_TEXT[a["device"]]
    return _pick(rng, options), short, a["device"]


_POSITIVE: dict[str, Callable[[dict[str, Any], np.random.Generator], Sentence]] = {
    "Medical material": _device,
    "Arterial wall calcification": _aortic_calc,
    "Cardiomegaly": _cardiomegaly,
    "Pericardial effusion": _pericardial,
    "Coronary artery wall calcification": _coronary,
    "Hiatal hernia": _hernia,
    "Lymphadenopathy": _nodes,
    "Emphysema": _emphysema,
    "Atelectasis": _atelectasis,
    "Lung nodule": _nodule,
    "Lung opacity": _opacity,
    "Pleural effusion": _pleural,
    "Consolidation": _consolidation,
}

# label -> (findings phrasings, short negative)
_NEGATIVE: dict[str, tuple[list[str], str]] = {
    "Medical material": (["No medical device or foreign material is observed."], "No medical material."),
    "Arterial wall calcification": (
        [
            "No calcific plaques were observed in the aortic wall.",
            "The thoracic aorta shows no atherosclerotic calcification.",
        ],
        "No aortic wall calcification.",
    ),
    "Cardiomegaly": (
        ["Heart contour and size are normal.", "Heart size is within normal limits."],
        "Heart size is normal.",
    ),
    "Pericardial effusion": (
        ["No pericardial effusion or thickening was detected.", "Pericardium is unremarkable."],
        "No pericardial effusion.",
    ),
    "Coronary artery wall calcification": (
        ["No coronary artery calcification is seen."],
        "No coronary calcification.",
    ),
    "Hiatal hernia": (
        ["No hiatal hernia was detected.", "Thoracic oesophagus calibre is normal; no hiatal hernia."],
        "No hiatal hernia.",
    ),
    "Lymphadenopathy": (
        [
            "No lymph node in pathological size and appearance was detected in the mediastinum or hilar regions.",
            "No mediastinal or hilar lymphadenopathy.",
        ],
        "No lymphadenopathy.",
    ),
    "Emphysema": (["No emphysematous changes are seen.", "There is no emphysema."], "No emphysema."),
    "Atelectasis": (["No atelectasis is observed.", "There is no atelectasis."], "No atelectasis."),
    "Lung nodule": (
        ["No mass or nodular lesion was detected in either lung.", "No pulmonary nodule is seen."],
        "No lung nodule.",
    ),
    "Lung opacity": (
        ["No ground-glass opacity is observed.", "No abnormal density increase in the lung parenchyma."],
        "No lung opacity.",
    ),
    "Pulmonary fibrotic sequela": (["No fibrotic sequelae are seen in the lungs."], "No fibrotic sequela."),
    "Pleural effusion": (
        ["No pleural effusion or thickening was detected.", "Pleural spaces are clear."],
        "No pleural effusion.",
    ),
    "Mosaic attenuation pattern": (["No mosaic attenuation pattern is observed."], "No mosaic attenuation."),
    "Peribronchial thickening": (["No peribronchial thickening is seen."], "No peribronchial thickening."),
    "Consolidation": (
        [
            "No consolidation or infiltration was detected in the lung parenchyma.",
            "There is no consolidation.",
        ],
        "No consolidation.",
    ),
    "Bronchiectasis": (["No bronchiectasis is observed."], "No bronchiectasis."),
    "Interlobular septal thickening": (
        ["No interlobular septal thickening is seen."],
        "No interlobular septal thickening.",
    ),
}

# Anatomical sections (in report order) and the labels discussed in each.
_SECTIONS: list[tuple[str, list[str]]] = [
    ("airways", []),
    (
        "mediastinum",
        [
            "Cardiomegaly",
            "Pericardial effusion",
            "Arterial wall calcification",
            "Coronary artery wall calcification",
            "Lymphadenopathy",
        ],
    ),
    ("oesophagus", ["Hiatal hernia"]),
    (
        "lungs",
        [
            "Emphysema",
            "Lung nodule",
            "Consolidation",
            "Lung opacity",
            "Atelectasis",
            "Pulmonary fibrotic sequela",
            "Mosaic attenuation pattern",
            "Peribronchial thickening",
            "Bronchiectasis",
            "Interlobular septal thickening",
        ],
    ),
    ("pleura", ["Pleural effusion"]),
    ("abdomen", []),
    ("bones", []),
]
_DEVICE_SECTION = {
    "central venous catheter": "mediastinum",
    "pacemaker": "mediastinum",
    "sternotomy wires": "bones",
    "nasogastric tube": "oesophagus",
}
assert sorted(_NEGATIVE) == sorted(CT_RATE_LABELS)

# The CapPa section each label's sentences belong to (COLIPRI App. E.2's eight sections).
_LABEL_SECTION = {
    "Medical material": "Tubes Lines and Devices",
    "Arterial wall calcification": "Cardiovascular Structures",
    "Cardiomegaly": "Cardiovascular Structures",
    "Pericardial effusion": "Cardiovascular Structures",
    "Coronary artery wall calcification": "Cardiovascular Structures",
    "Hiatal hernia": "Mediastinum and Hila",
    "Lymphadenopathy": "Mediastinum and Hila",
    "Pleural effusion": "Pleura",
    **{label: "Lungs and Airways" for label in _SECTIONS[3][1]},
}
assert sorted(_LABEL_SECTION) == sorted(CT_RATE_LABELS)
assert set(_LABEL_SECTION.values()) <= set(SECTION_NAMES)
_BOILERPLATE_SECTION = {
    "airways": "Lungs and Airways",
    "mediastinum": "Cardiovascular Structures",  # "Calibration of the thoracic main vascular structures"
    "abdomen": "Upper Abdomen",
    "bones": "Bones and Soft Tissues",
}
_NON_CONTRAST = "Mediastinal structures cannot be evaluated optimally in non-contrast examination."

_BOILERPLATE = {
    "airways": [
        "Trachea and both main bronchi are open.",
        "Trachea and main bronchi are patent.",
        "The trachea and both main bronchi are of normal calibre and open.",
    ],
    "mediastinum": ["Calibration of the thoracic main vascular structures is normal."],
    "abdomen": [
        "Upper abdominal organs included in the sections are normal.",
        "No pathology was detected in the upper abdominal sections.",
    ],
    "bones": [
        "No lytic-destructive lesions were detected in the bone structures within the sections.",
        "Bone structures are unremarkable.",
    ],
}

_CLINICAL = [
    "Cough.",
    "Shortness of breath.",
    "Chest pain.",
    "Fever and cough for one week.",
    "Dyspnea.",
    "Follow-up.",
    "Known malignancy, staging.",
    "Preoperative evaluation.",
    "COVID-19 suspicion.",
]

_NORMAL_IMPRESSION = [
    "No significant pathology was detected in the thorax.",
    "Normal chest CT.",
    "No acute thoracic pathology.",
]


def chest_report(
    findings: list[Finding], contrast: bool, slice_mm: float, rng: np.random.Generator
) -> Report:
    """Report of a chest case: findings sentences, impressions and the shortened findings."""
    present = {f.label: f for f in findings}
    # phantom section -> [(sentence, CapPa section)]
    by_section: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in _SECTIONS}
    positive, negative, impressions = [], [], []

    def boilerplate(section: str) -> None:
        by_section[section].append((_pick(rng, _BOILERPLATE[section]), _BOILERPLATE_SECTION[section]))

    boilerplate("airways")
    if not contrast and rng.random() < 0.7:
        by_section["mediastinum"].append((_NON_CONTRAST, "Image Quality"))
    elif rng.random() < 0.5:
        text = _BOILERPLATE["mediastinum"][0]
        by_section["mediastinum"].append((text, _BOILERPLATE_SECTION["mediastinum"]))
    for section, labels in _SECTIONS:
        for label in labels:
            if label in present:
                text, short, imp = _POSITIVE[label](present[label].attrs, rng)
                by_section[section].append((text, _LABEL_SECTION[label]))
                positive.append(short)
                impressions.append(imp)
            elif rng.random() < 0.55:
                options, short = _NEGATIVE[label]
                by_section[section].append((_pick(rng, options), _LABEL_SECTION[label]))
                negative.append(short)
        if section == "mediastinum" and "Medical material" not in present and rng.random() < 0.3:
            options, short = _NEGATIVE["Medical material"]
            by_section[section].append((_pick(rng, options), _LABEL_SECTION["Medical material"]))
            negative.append(short)
    if "Medical material" in present:
        text, short, imp = _device(present["Medical material"].attrs, rng)
        by_section[_DEVICE_SECTION[present["Medical material"].attrs["device"]]].append(
            (text, _LABEL_SECTION["Medical material"])
        )
        positive.append(short)
        impressions.append(imp)
    for section in ("abdomen", "bones"):
        boilerplate(section)
    sentences = [pair for name, _ in _SECTIONS for pair in by_section[name]]
    findings_text = " ".join(text for text, _ in sentences)
    sections: dict[str, list[str]] = {name: [] for name in SECTION_NAMES}
    for text, name in sentences:
        sections[name].append(text)
    if impressions:
        impressions_text = " ".join(_cap(s) + "." for s in impressions)
    else:
        impressions_text = _pick(rng, _NORMAL_IMPRESSION)
    clinical = _pick(rng, _CLINICAL)
    if "Lung nodule" in present and rng.random() < 0.4:
        clinical = "Follow-up of pulmonary nodule."
    thick = f"{slice_mm:.1f}".rstrip("0").rstrip(".")
    if contrast:
        technique = _pick(
            rng,
            [
                f"Contrast-enhanced axial images of the thorax were obtained with {thick} mm slice thickness.",
                f"Intravenous contrast-enhanced thorax CT, axial sections of {thick} mm.",
            ],
        )
    else:
        technique = _pick(
            rng,
            [
                f"Non-contrast axial images of the thorax were obtained with {thick} mm slice thickness.",
                f"Non-contrast thorax CT, axial sections of {thick} mm in mediastinal and parenchymal windows.",
            ],
        )
    return Report(clinical, technique, findings_text, impressions_text, positive, negative, sections)


def head_report(rng: np.random.Generator) -> Report:
    """Report of a (non-chest) head CT."""
    findings = _pick(
        rng,
        [
            "No acute intracranial haemorrhage, mass effect or midline shift. Ventricles are of normal size. Calvarium is intact.",
            "Brain parenchyma shows normal density. No extra-axial collection. Ventricular system is normal. Bone structures are intact.",
        ],
    )
    return Report(
        clinical=_pick(rng, ["Headache.", "Head trauma.", "Dizziness."]),
        technique="Non-contrast axial images of the brain were obtained.",
        findings=findings,
        impressions="No acute intracranial pathology.",
        positive=[],
        negative=["No intracranial haemorrhage."],
    )
