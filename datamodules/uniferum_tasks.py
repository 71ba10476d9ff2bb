"""Uniferum task construction: every training sample is one (volume, task text, target).

Task types (Uniferum Sec. 3.3):

* **diagnosis**: "Diagnose the presence of {label} {in|around} the {organ}", one per label of the
  tables below (the paper's template is "in/around the [organ]"; each label takes the preposition
  that reads right, e.g. "pleural effusion around the lungs"). Labels with the same text in several
  datasets (CT-RATE "Cardiomegaly", Merlin ``cardiomegaly``, RAD-ChestCT ``cardiomegaly``) are one
  task, so training on several datasets is one config change.
* **prognosis**: "Predict the risk of {event} in {x} months", for labels named
  ``<x>_month_<event>`` (INSPECT style, e.g. ``12_month_mortality``) in any source.
* **segmentation**: "Segment {organ} in the image.", for the organs of ``datamodules/totalseg.py``
  (the five bit-field organs and the TotalSegmentator ones of Suppl. Tab. 1) where a volume has
  their mask.

Sampling (re-drawn every epoch from ``(seed, epoch)``, :meth:`TaskSampler.draw`):

* per classification task, all positives plus as many negatives as positives (fewer only when a
  task has fewer negatives), drawn without replacement;
* plus ``seg_fraction`` (10 %) of the dataset's volume count as segmentation samples ("an extra
  10% samples from the dataset", Sec. 3.3): volumes with masks, each with one of its organs.

The counts depend only on the labels, so every epoch has the same size (the training sampler
needs that); only its content changes. An unknown label (NaN, or Merlin's -1) never makes a task
sample, neither as positive nor as negative. Labels listed as ``held_out`` make no training sample
at all; they are evaluated as unseen tasks (zero-shot on new task text).

Label -> (text, preposition, organ) tables, one per source, below. RAD-ChestCT: the 39 labels the
paper selects (7 shared with CT-RATE + 32 unique, its appendix Table 1); labels outside a table
make no task.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from datamodules.totalseg import ORGANS, SEGMENTATION_ORGANS

DIAGNOSIS, PROGNOSIS, SEGMENTATION = "diagnosis", "prognosis", "segmentation"
CLASSIFICATION_KINDS = (DIAGNOSIS, PROGNOSIS)


@dataclass(frozen=True)
class Finding:
    """How a label reads in a diagnosis prompt: "... of {text} {preposition} the {organ}"."""

    text: str
    preposition: str
    organ: str


def _f(text: str, organ: str, preposition: str = "in") -> Finding:
    return Finding(text, preposition, organ)


# ------------------------------------------------------------------------------ label -> organ tables
CT_RATE_FINDINGS: dict[str, Finding] = {
    "Medical material": _f("medical material", "chest"),
    "Arterial wall calcification": _f("arterial wall calcification", "aorta"),
    "Cardiomegaly": _f("cardiomegaly", "heart"),
    "Pericardial effusion": _f("pericardial effusion", "heart", "around"),
    "Coronary artery wall calcification": _f("coronary artery wall calcification", "heart"),
    "Hiatal hernia": _f("hiatal hernia", "esophagus", "around"),
    "Lymphadenopathy": _f("lymphadenopathy", "mediastinum"),
    "Emphysema": _f("emphysema", "lungs"),
    "Atelectasis": _f("atelectasis", "lungs"),
    "Lung nodule": _f("lung nodules", "lungs"),
    "Lung opacity": _f("lung opacity", "lungs"),
    "Pulmonary fibrotic sequela": _f("pulmonary fibrotic sequela", "lungs"),
    "Pleural effusion": _f("pleural effusion", "lungs", "around"),
    "Mosaic attenuation pattern": _f("mosaic attenuation pattern", "lungs"),
    "Peribronchial thickening": _f("peribronchial thickening", "lungs"),
    "Consolidation": _f("consolidation", "lungs"),
    "Bronchiectasis": _f("bronchiectasis", "lungs"),
    "Interlobular septal thickening": _f("interlobular septal thickening", "lungs"),
}

# RAD-ChestCT summary labels (datamodules/labels.py names): the paper's 7 shared + 32 unique.
RAD_CHESTCT_FINDINGS: dict[str, Finding] = {
    # shared with CT-RATE: same text, so the same task
    "atelectasis": CT_RATE_FINDINGS["Atelectasis"],
    "bronchiectasis": CT_RATE_FINDINGS["Bronchiectasis"],
    "cardiomegaly": CT_RATE_FINDINGS["Cardiomegaly"],
    "consolidation": CT_RATE_FINDINGS["Consolidation"],
    "emphysema": CT_RATE_FINDINGS["Emphysema"],
    "pericardial_effusion": CT_RATE_FINDINGS["Pericardial effusion"],
    "pleural_effusion": CT_RATE_FINDINGS["Pleural effusion"],
    # unique to RAD-ChestCT
    "air_trapping": _f("air trapping", "lungs"),
    "airspace_disease": _f("airspace disease", "lungs"),
    "aspiration": _f("aspiration", "lungs"),
    "bandlike_or_linear": _f("band-like or linear opacities", "lungs"),
    "bronchial_wall_thickening": _f("bronchial wall thickening", "lungs"),
    "bronchiolectasis": _f("bronchiolectasis", "lungs"),
    "bronchiolitis": _f("bronchiolitis", "lungs"),
    "bronchitis": _f("bronchitis", "lungs"),
    "cabg": _f("coronary artery bypass grafting", "heart"),
    "coronary_artery_disease": _f("coronary artery disease", "heart"),
    "groundglass": _f("ground-glass opacity", "lungs"),
    "heart_failure": _f("heart failure", "heart"),
    "heart_valve_replacement": _f("heart valve replacement", "heart"),
    "hemothorax": _f("hemothorax", "lungs", "around"),
    "honeycombing": _f("honeycombing", "lungs"),
    "infiltrate": _f("infiltrate", "lungs"),
    "interstitial_lung_disease": _f("interstitial lung disease", "lungs"),
    "lung_resection": _f("lung resection", "lungs"),
    "mucous_plugging": _f("mucous plugging", "lungs"),
    "pacemaker_or_defib": _f("pacemaker or defibrillator", "heart"),
    "pericardial_thickening": _f("pericardial thickening", "heart", "around"),
    "pleural_thickening": _f("pleural thickening", "lungs", "around"),
    "pneumonia": _f("pneumonia", "lungs"),
    "pneumonitis": _f("pneumonitis", "lungs"),
    "pneumothorax": _f("pneumothorax", "lungs", "around"),
    "pulmonary_edema": _f("pulmonary edema", "lungs"),
    "reticulation": _f("reticulation", "lungs"),
    "scattered_nod": _f("scattered nodules", "lungs"),
    "septal_thickening": _f("septal thickening", "lungs"),
    "sternotomy": _f("sternotomy", "chest"),
    "tree_in_bud": _f("tree-in-bud pattern", "lungs"),
    "tuberculosis": _f("tuberculosis", "lungs"),
}

# Merlin's 30 diseases (abdominal CT). Shared meanings reuse the CT-RATE text (one task).
MERLIN_FINDINGS: dict[str, Finding] = {
    "submucosal_edema": _f("submucosal edema", "bowel"),
    "renal_hypodensities": _f("renal hypodensities", "kidneys"),
    "aortic_valve_calcification": _f("aortic valve calcification", "heart"),
    "coronary_calcification": CT_RATE_FINDINGS["Coronary artery wall calcification"],
    "thrombosis": _f("thrombosis", "abdominal vessels"),
    "metastatic_disease": _f("metastatic disease", "abdomen"),
    "pancreatic_atrophy": _f("pancreatic atrophy", "pancreas"),
    "renal_cyst": _f("renal cysts", "kidneys"),
    "osteopenia": _f("osteopenia", "spine"),
    "surgically_absent_gallbladder": _f("a surgically absent gallbladder", "gallbladder bed"),
    "atelectasis": CT_RATE_FINDINGS["Atelectasis"],
    "abdominal_aortic_aneurysm": _f("abdominal aortic aneurysm", "aorta"),
    "anasarca": _f("anasarca", "body"),
    "hiatal_hernia": CT_RATE_FINDINGS["Hiatal hernia"],
    "lymphadenopathy": _f("lymphadenopathy", "abdomen"),
    "prostatomegaly": _f("prostatomegaly", "prostate"),
    "biliary_ductal_dilation": _f("biliary ductal dilation", "liver"),
    "cardiomegaly": CT_RATE_FINDINGS["Cardiomegaly"],
    "splenomegaly": _f("splenomegaly", "spleen"),
    "hepatomegaly": _f("hepatomegaly", "liver"),
    "atherosclerosis": _f("atherosclerosis", "abdominal aorta"),
    "ascites": _f("ascites", "abdominal organs", "around"),
    "pleural_effusion": CT_RATE_FINDINGS["Pleural effusion"],
    "hepatic_steatosis": _f("hepatic steatosis", "liver"),
    "appendicitis": _f("appendicitis", "appendix"),
    "gallstones": _f("gallstones", "gallbladder"),
    "hydronephrosis": _f("hydronephrosis", "kidneys"),
    "bowel_obstruction": _f("bowel obstruction", "bowel"),
    "free_air": _f("free air", "bowel", "around"),
    "fracture": _f("fractures", "bones"),
}

# INSPECT (CT pulmonary angiograms): the PE diagnosis. Its 7 outcome labels (``<x>_month_<event>``)
# are prognosis tasks by their names and need no entry.
INSPECT_FINDINGS: dict[str, Finding] = {
    "pe_positive": _f("pulmonary embolism", "pulmonary arteries"),
}

SOURCE_FINDINGS: dict[str, dict[str, Finding]] = {
    "ct_rate": CT_RATE_FINDINGS,
    "rad_chestct": RAD_CHESTCT_FINDINGS,
    "merlin": MERLIN_FINDINGS,
    "inspect": INSPECT_FINDINGS,
}

# How each organ reads in "Segment {organ} in the image."
# The fine organs read as Uniferum's Suppl. Tab. 1 names them ("Left upper pulmonary lobe", ...);
# heart keeps our "heart" (the paper: "Cardiac organ").
ORGAN_TEXT: dict[str, str] = {
    "body": "body",
    "lungs": "lungs",
    "heart": "heart",
    "aorta": "thoracic aorta",
    "spine": "spine",
    "liver": "liver",
    "stomach": "stomach",
    "lung_upper_lobe_left": "left upper pulmonary lobe",
    "lung_lower_lobe_left": "left lower pulmonary lobe",
    "lung_upper_lobe_right": "right upper pulmonary lobe",
    "lung_middle_lobe_right": "right middle pulmonary lobe",
    "lung_lower_lobe_right": "right lower pulmonary lobe",
    "esophagus": "esophagus",
    "trachea": "tracheal airway",
    **{f"vertebrae_T{i}": f"thoracic vertebra {i}" for i in range(1, 13)},
    "pulmonary_vein": "pulmonary vein",
    "atrial_appendage_left": "left atrial appendage",
    "superior_vena_cava": "superior vena cava",
    "inferior_vena_cava": "inferior vena cava",
    **{f"rib_{side}_{i}": f"{side} rib {i}" for side in ("left", "right") for i in range(1, 13)},
    "sternum": "sternal body",
    "costal_cartilages": "costal cartilaginous structures",
    "thoracic_vertebrae": "thoracic vertebrae",
    "ribs": "ribs",
    "ribs_left": "left ribs",
    "ribs_right": "right ribs",
}
# Event names that read badly as spelled in a label column (INSPECT's ``12_month_PH``).
PROGNOSIS_EVENTS: dict[str, str] = {"PH": "pulmonary hypertension"}
PROGNOSIS_LABEL = re.compile(r"^(?P<months>\d+)_months?_(?P<event>.+)$", re.IGNORECASE)


def diagnosis_text(finding: Finding) -> str:
    return f"Diagnose the presence of {finding.text} {finding.preposition} the {finding.organ}"


def prognosis_text(event: str, months: int) -> str:
    return f"Predict the risk of {event} in {months} months"


def segmentation_text(organ: str) -> str:
    return f"Segment {ORGAN_TEXT.get(organ, organ)} in the image."


def slug(text: str) -> str:
    """A label or organ as a metric-name part: ``"Lung nodule"`` -> ``"lung_nodule"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Task:
    """One task text. ``columns`` maps source -> the label column it reads there (classification)."""

    name: str  # metric name part, e.g. "cardiomegaly" or "lungs"
    kind: str  # diagnosis | prognosis | segmentation
    text: str
    columns: dict[str, int] = field(default_factory=dict)
    organ: str | None = None  # segmentation tasks
    held_out: bool = False


def classification_task(source: str, label: str, text: str | None = None) -> tuple[str, str, str] | None:
    """(kind, text, name) of one source label, or ``None`` when the label has no task. A given
    ``text`` replaces the table's (a label outside the tables then gets a diagnosis task)."""
    match = PROGNOSIS_LABEL.match(label)
    if text is not None:
        return (PROGNOSIS if match else DIAGNOSIS), text, slug(label)
    if match:
        event = match["event"].replace("_", " ").strip()
        event = PROGNOSIS_EVENTS.get(event, event)
        months = int(match["months"])
        return PROGNOSIS, prognosis_text(event, months), slug(f"{event} {months} months")
    finding = SOURCE_FINDINGS.get(source, {}).get(label)
    if finding is None:
        return None
    return DIAGNOSIS, diagnosis_text(finding), slug(finding.text)


def build_tasks(
    label_names: dict[str, Sequence[str]],
    held_out: Sequence[str] = (),
    organs: Sequence[str] = ORGANS,
    texts: Mapping[str, str] | None = None,
) -> list[Task]:
    """The tasks of some sources (source -> its label columns): classification tasks first (in
    source, then column order; one task per distinct text), then one segmentation task per organ.

    ``held_out`` names labels (as a source spells them, or the task name) whose task is evaluated
    but never trained on. ``texts`` maps labels to task texts that replace the tables'.
    """
    texts = dict(texts or {})
    held = {h.strip() for h in held_out}
    by_text: dict[str, dict[str, object]] = {}
    for source, names in label_names.items():
        for column, label in enumerate(names):
            task = classification_task(source, label, texts.get(label))
            if task is None:
                continue
            kind, text, name = task
            entry = by_text.setdefault(text, {"kind": kind, "name": name, "columns": {}, "held": False})
            entry["columns"][source] = column  # type: ignore[index]
            if label in held or name in held:
                entry["held"] = True
    known = {str(e["name"]) for e in by_text.values()} | {
        label for names in label_names.values() for label in names
    }
    unknown = sorted((held | set(texts)) - known)
    if unknown:
        raise ValueError(
            f"label(s) {unknown} (held out or given a task text) are not labels of the configured sources"
        )
    tasks = [
        Task(str(e["name"]), str(e["kind"]), text, dict(e["columns"]), held_out=bool(e["held"]))  # type: ignore[arg-type]
        for text, e in by_text.items()
    ]
    unknown_organs = [organ for organ in organs if organ not in SEGMENTATION_ORGANS]
    if unknown_organs:
        raise ValueError(
            f"uniferum.seg_organs: unknown organ(s) {unknown_organs}; known: {', '.join(SEGMENTATION_ORGANS)}"
        )
    tasks += [Task(organ, SEGMENTATION, segmentation_text(organ), organ=organ) for organ in organs]
    return tasks


def task_label(labels: Sequence[float], source: str, task: Task) -> float:
    """A volume's target for a classification task: 1.0, 0.0 or NaN (unknown: NaN, -1, or no column)."""
    column = task.columns.get(source)
    if column is None:
        return math.nan
    value = float(labels[column])
    return value if value in (0.0, 1.0) else math.nan


@dataclass
class EpochSamples:
    """One epoch's samples as parallel arrays: volume index, task index, target (NaN for segmentation)."""

    volume: np.ndarray
    task: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.volume)


class TaskSampler:
    """Draws the balanced task samples of one epoch (see the module docstring).

    ``volumes`` are (source, labels, organs-with-masks) per volume. Targets are precomputed once per
    (task, volume); :meth:`draw` is a pure function of ``(seed, epoch)``.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        volumes: Sequence[tuple[str, Sequence[float], Sequence[str]]],
        seg_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.tasks = list(tasks)
        self.seed = seed
        self.seg_fraction = float(seg_fraction)
        self.positives: dict[int, np.ndarray] = {}
        self.negatives: dict[int, np.ndarray] = {}
        for t, task in enumerate(self.tasks):
            if task.kind not in CLASSIFICATION_KINDS or task.held_out:
                continue
            values = np.array([task_label(labels, source, task) for source, labels, _ in volumes])
            self.positives[t] = np.flatnonzero(values == 1.0)
            self.negatives[t] = np.flatnonzero(values == 0.0)
        seg_task = {task.organ: t for t, task in enumerate(self.tasks) if task.kind == SEGMENTATION}
        pairs = [
            (v, seg_task[o]) for v, (_, _, organs) in enumerate(volumes) for o in organs if o in seg_task
        ]
        self.seg_volumes = np.array(sorted({v for v, _ in pairs}), dtype=np.int64)
        self.seg_tasks_of: dict[int, np.ndarray] = {}
        for v, t in pairs:
            self.seg_tasks_of.setdefault(v, np.empty(0, dtype=np.int64))
            self.seg_tasks_of[v] = np.append(self.seg_tasks_of[v], t)
        self.n_classification = sum(
            len(self.positives[t]) + min(len(self.positives[t]), len(self.negatives[t]))
            for t in self.positives
        )
        self.n_segmentation = int(round(self.seg_fraction * len(volumes))) if len(self.seg_volumes) else 0

    def __len__(self) -> int:
        return self.n_classification + self.n_segmentation

    def draw(self, epoch: int) -> EpochSamples:
        rng = np.random.default_rng([self.seed, 0x7A5C, epoch])
        volumes: list[np.ndarray] = []
        tasks: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        for t in sorted(self.positives):
            pos, neg = self.positives[t], self.negatives[t]
            chosen = rng.choice(neg, size=min(len(pos), len(neg)), replace=False)
            volumes += [pos, chosen]
            tasks.append(np.full(len(pos) + len(chosen), t, dtype=np.int64))
            targets += [np.ones(len(pos)), np.zeros(len(chosen))]
        if self.n_segmentation:
            # Without replacement while the volumes last (the paper samples 10 % of the dataset).
            reps = -(-self.n_segmentation // len(self.seg_volumes))
            pool = np.concatenate([rng.permutation(self.seg_volumes) for _ in range(reps)])
            picked = pool[: self.n_segmentation]
            organs = np.array([rng.choice(self.seg_tasks_of[int(v)]) for v in picked], dtype=np.int64)
            volumes.append(picked)
            tasks.append(organs)
            targets.append(np.full(len(picked), np.nan))
        return EpochSamples(
            volume=np.concatenate(volumes).astype(np.int64) if volumes else np.empty(0, dtype=np.int64),
            task=np.concatenate(tasks) if tasks else np.empty(0, dtype=np.int64),
            target=np.concatenate(targets).astype(np.float32) if targets else np.empty(0, dtype=np.float32),
        )
