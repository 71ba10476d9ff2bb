"""Label name spaces of the supported datasets."""

from __future__ import annotations

import math

# The 18 CT-RATE abnormality labels, in the column order of the CT-RATE label CSVs.
CT_RATE_LABELS: list[str] = [
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
]

# ------------------------------------------------------------------------------------------------ Merlin
# The 30 diseases of Merlin's ``zero_shot_findings_disease_cls.csv``, in the dataset's column order.
# Values are 1 / 0 / -1; -1 (not mentioned or uncertain) is read as NaN = unknown, so it is masked
# out of every loss and metric (mapping it to 0 turns absent mentions into false negatives).
MERLIN_LABELS: list[str] = [
    "submucosal_edema",
    "renal_hypodensities",
    "aortic_valve_calcification",
    "coronary_calcification",
    "thrombosis",
    "metastatic_disease",
    "pancreatic_atrophy",
    "renal_cyst",
    "osteopenia",
    "surgically_absent_gallbladder",
    "atelectasis",
    "abdominal_aortic_aneurysm",
    "anasarca",
    "hiatal_hernia",
    "lymphadenopathy",
    "prostatomegaly",
    "biliary_ductal_dilation",
    "cardiomegaly",
    "splenomegaly",
    "hepatomegaly",
    "atherosclerosis",
    "ascites",
    "pleural_effusion",
    "hepatic_steatosis",
    "appendicitis",
    "gallstones",
    "hydronephrosis",
    "bowel_obstruction",
    "free_air",
    "fracture",
]

# ------------------------------------------------------------------------------------------- RAD-ChestCT
# The 84 abnormalities and 52 locations of RAD-ChestCT's ``img{train,valid,test}_Abnormality_and_
# Location_Labels.csv`` (columns ``NoteAcc_DEID`` and ``<abnormality>*<location>``, 84 x 52 = 4368): the
# 83 abnormalities of Draelos et al. plus ``nodulegr1cm`` (a nodule larger than 1 cm).
RAD_CHESTCT_ABNORMALITIES: list[str] = [
    "air_trapping", "airspace_disease", "aneurysm", "arthritis", "aspiration", "atelectasis",
    "atherosclerosis", "bandlike_or_linear", "breast_implant", "breast_surgery", "bronchial_wall_thickening",
    "bronchiectasis", "bronchiolectasis", "bronchiolitis", "bronchitis", "cabg", "calcification", "cancer",
    "cardiomegaly", "catheter_or_port", "cavitation", "chest_tube", "clip", "congestion", "consolidation",
    "coronary_artery_disease", "cyst", "debris", "deformity", "density", "dilation_or_ectasia", "distention",
    "emphysema", "fibrosis", "fracture", "gi_tube", "granuloma", "groundglass", "hardware", "heart_failure",
    "heart_valve_replacement", "hemothorax", "hernia", "honeycombing", "infection", "infiltrate",
    "inflammation", "interstitial_lung_disease", "lesion", "lucency", "lung_resection", "lymphadenopathy",
    "mass", "mucous_plugging", "nodule", "nodulegr1cm", "opacity", "other_path", "pacemaker_or_defib", "pericardial_effusion",
    "pericardial_thickening", "plaque", "pleural_effusion", "pleural_thickening", "pneumonia", "pneumonitis",
    "pneumothorax", "postsurgical", "pulmonary_edema", "reticulation", "scarring", "scattered_calc",
    "scattered_nod", "secretion", "septal_thickening", "soft_tissue", "staple", "stent", "sternotomy", "suture",
    "tracheal_tube", "transplant", "tree_in_bud", "tuberculosis",
]  # fmt: skip
RAD_CHESTCT_LOCATIONS: list[str] = [
    "left_upper", "left_mid", "left_lower", "right_upper", "right_mid", "right_lower", "right_lung",
    "left_lung", "lung", "airways", "heart", "mitral_valve", "aortic_valve", "tricuspid_valve",
    "pulmonary_valve", "aorta", "svc", "ivc", "pulmonary_artery", "pulmonary_vein", "right", "left",
    "anterior", "posterior", "superior", "inferior", "medial", "lateral", "interstitial", "subpleural",
    "centrilobular", "thyroid", "breast", "axilla", "chest_wall", "rib", "spine", "bone", "mediastinum",
    "diaphragm", "hilum", "abdomen", "esophagus", "stomach", "intestine", "liver", "gallbladder", "kidney",
    "adrenal_gland", "spleen", "pancreas", "other_location",
]  # fmt: skip
# Location-specific labels the CT-RATE mapping needs (calcification of the aorta vs. of the heart).
RAD_CHESTCT_LOCATION_LABELS: list[str] = ["calcification*aorta", "calcification*heart"]
# The RAD-ChestCT label space: the per-abnormality summary labels (1 if the abnormality is marked at any
# location), then the location-specific labels above.
RAD_CHESTCT_LABELS: list[str] = [*RAD_CHESTCT_ABNORMALITIES, *RAD_CHESTCT_LOCATION_LABELS]

# ----------------------------------------------------------------------------------------------- INSPECT
# INSPECT (CT pulmonary angiograms, Stanford AIMI): the NLP-derived PE diagnosis (the release's column
# ``pe_positive_nlp``) and the 7 prognostic labels as the label table names them. The prognostic names
# follow ``<x>_month_<event>``, so Uniferum makes "Predict the risk of {event} in {x} months" tasks of
# them. Values True / False / Censored; Censored (and blank) is NaN = unknown, masked everywhere.
INSPECT_LABELS: list[str] = [
    "pe_positive",
    "1_month_mortality",
    "6_month_mortality",
    "12_month_mortality",
    "1_month_readmission",
    "6_month_readmission",
    "12_month_readmission",
    "12_month_PH",
]

# ---------------------------------------------------------------------------- mappings onto CT-RATE names
# target CT-RATE label -> the source labels it is derived from. Several source labels combine as "any":
# 1 if any of them is 1, 0 if all of them are known and 0, otherwise unknown (NaN). A CT-RATE label a
# source has no counterpart for stays NaN for that source's volumes.
#
# Merlin (abdominal CT) shares 6 classes with CT-RATE by name and meaning. Deliberately not mapped:
# Merlin's `atherosclerosis` (abdominal aorta and iliacs) vs. CT-RATE's "Arterial wall calcification"
# (thoracic), and Merlin's `aortic_valve_calcification` (a valve, not a wall).
MERLIN_TO_CT_RATE: dict[str, list[str]] = {
    "Cardiomegaly": ["cardiomegaly"],
    "Coronary artery wall calcification": ["coronary_calcification"],
    "Hiatal hernia": ["hiatal_hernia"],
    "Lymphadenopathy": ["lymphadenopathy"],
    "Atelectasis": ["atelectasis"],
    "Pleural effusion": ["pleural_effusion"],
}
# RAD-ChestCT covers 17 of the 18 CT-RATE classes; only "Mosaic attenuation pattern" has no counterpart
# (RAD-ChestCT's air_trapping is a cause of mosaic attenuation, not the pattern). COLIPRI evaluates "the
# 16 labels that can be derived" without listing them; Medical material (a union of 11 device classes) is
# the least direct of the 17 here. Calcification is split by location: aorta -> arterial wall, heart ->
# coronary artery wall (RAD-ChestCT's vocabulary files coronary findings under the heart).
RAD_CHESTCT_TO_CT_RATE: dict[str, list[str]] = {
    "Medical material": [
        "catheter_or_port",
        "tracheal_tube",
        "chest_tube",
        "pacemaker_or_defib",
        "stent",
        "clip",
        "staple",
        "gi_tube",
        "hardware",
        "suture",
        "heart_valve_replacement",
    ],  # fmt: skip
    "Arterial wall calcification": ["calcification*aorta"],
    "Cardiomegaly": ["cardiomegaly"],
    "Pericardial effusion": ["pericardial_effusion"],
    "Coronary artery wall calcification": ["calcification*heart"],
    "Hiatal hernia": ["hernia"],
    "Lymphadenopathy": ["lymphadenopathy"],
    "Emphysema": ["emphysema"],
    "Atelectasis": ["atelectasis"],
    "Lung nodule": ["nodule", "nodulegr1cm", "scattered_nod"],
    "Lung opacity": ["opacity", "groundglass"],
    "Pulmonary fibrotic sequela": ["fibrosis", "scarring"],
    "Pleural effusion": ["pleural_effusion"],
    "Peribronchial thickening": ["bronchial_wall_thickening"],
    "Consolidation": ["consolidation"],
    "Bronchiectasis": ["bronchiectasis"],
    "Interlobular septal thickening": ["septal_thickening"],
}

# Native label space of every source ("image_only" has none) and its mapping onto CT-RATE names.
# INSPECT shares no CT-RATE label (PE and outcomes are not among the 18): its mapping is empty.
SOURCE_LABELS: dict[str, list[str]] = {
    "ct_rate": CT_RATE_LABELS,
    "merlin": MERLIN_LABELS,
    "rad_chestct": RAD_CHESTCT_LABELS,
    "inspect": INSPECT_LABELS,
    "image_only": [],
}
TO_CT_RATE: dict[str, dict[str, list[str]]] = {
    "ct_rate": {name: [name] for name in CT_RATE_LABELS},
    "merlin": MERLIN_TO_CT_RATE,
    "rad_chestct": RAD_CHESTCT_TO_CT_RATE,
    "inspect": {},
    "image_only": {},
}


def label_projection(
    source: str, source_names: list[str], target: str, target_names: list[str]
) -> list[list[int]]:
    """For each target label, the indices of the source labels it is derived from (empty: unknown).

    Same source: identity. Otherwise both sides meet in the CT-RATE name space: a target label
    ``t`` takes the source labels that map to the CT-RATE label(s) that ``t`` maps to.
    """
    if source == target:
        position = {name: i for i, name in enumerate(source_names)}
        return [[position[name]] if name in position else [] for name in target_names]
    to_ct_rate_source = TO_CT_RATE.get(source, {})
    to_ct_rate_target = TO_CT_RATE.get(target, {})
    position = {name: i for i, name in enumerate(source_names)}
    projection: list[list[int]] = []
    for name in target_names:
        ct_rate_names = [ct for ct, natives in to_ct_rate_target.items() if name in natives]
        indices = sorted(
            {
                position[native]
                for ct in ct_rate_names
                for native in to_ct_rate_source.get(ct, [])
                if native in position
            }
        )
        projection.append(indices)
    return projection


def project_labels(values: list[float], projection: list[list[int]]) -> list[float]:
    """Apply :func:`label_projection`: any positive -> 1, all known and negative -> 0, else NaN."""
    out: list[float] = []
    for indices in projection:
        picked = [values[i] for i in indices]
        if not picked:
            out.append(math.nan)
        elif any(v == 1.0 for v in picked):
            out.append(1.0)
        elif all(v == 0.0 for v in picked):
            out.append(0.0)
        else:
            out.append(math.nan)
    return out
