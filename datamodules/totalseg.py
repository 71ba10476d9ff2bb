"""TotalSegmentator-style organ masks: the organs we segment, the label maps they come from, and
where CT-RATE keeps those maps.

CT-RATE ships TotalSegmentator (v2) outputs beside the volumes, one multi-label NIfTI per volume on
the volume's own voxel grid (same shape, same header as the image)::

    dataset/ts_seg/ts_total/train_fixed/train_<pid>/train_<pid>_<scan>/train_<pid>_<scan>_<recon>.nii.gz
    dataset/ts_seg/ts_total/valid_fixed/...
    (also ts_lung_nodules/ and ts_pleural_pericard_effusion/, not used here)

TotalSegmentator's ``total`` task has no body outline; that is its separate ``body`` task
(1 = body_trunc, 2 = body_extremities). CT-RATE does not ship it. We read it from
``ts_seg/ts_body/`` in the same layout when present (the phantom writes it; for real CT-RATE run
``TotalSegmentator -ta body --ml`` into that folder). Where no body map exists, the Uniferum
geometry derives the body from the image (largest soft-tissue component, see
``datamodules/uniferum_geometry.py``) for centring only; there is then no body segmentation task.

Organ -> (TotalSegmentator task folder, label ids whose union is the organ):

=========  ==========  ==========================================================================
organ      task        TotalSegmentator v2 ``total`` / ``body`` class ids
=========  ==========  ==========================================================================
body       ts_body     1 body_trunc, 2 body_extremities
lungs      ts_total    10-14 (the five lobes: upper/lower left, upper/middle/lower right)
heart      ts_total    51 heart
aorta      ts_total    52 aorta
spine      ts_total    26-50 (vertebrae S1, L5-L1, T12-T1, C7-C1; the sacrum, 25, is left out)
=========  ==========  ==========================================================================

Those five organs are the coarse bit field of the cache (GreenRFM's anatomy classes, Uniferum's
crop geometry). Uniferum's segmentation tasks (its Suppl. Tab. 1) go further: 53 TotalSegmentator
``total`` classes and their unions (lungs, thoracic vertebrae, ribs, left / right ribs), read from
the ``total`` label map itself, which the cache keeps beside the volume (``ts_labels/``):
:data:`TS_ORGAN_IDS` lists them; :data:`UNIFERUM_PAPER_ORGANS` is the paper's list plus ``body``.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.records import MaskSource

TS_SEG_DIR = "ts_seg"
TS_TOTAL = "ts_total"
TS_BODY = "ts_body"

# TotalSegmentator v2 class ids used here (``totalsegmentator.map_to_binary.class_map``).
LUNG_LOBES: dict[str, int] = {
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11,
    "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14,
}
HEART = 51
AORTA = 52
VERTEBRAE: dict[str, int] = {
    "vertebrae_S1": 26,
    **{f"vertebrae_L{i}": 32 - i for i in range(5, 0, -1)},  # L5 = 27 ... L1 = 31
    **{f"vertebrae_T{i}": 44 - i for i in range(12, 0, -1)},  # T12 = 32 ... T1 = 43
    **{f"vertebrae_C{i}": 51 - i for i in range(7, 0, -1)},  # C7 = 44 ... C1 = 50
}
BODY_TRUNC, BODY_EXTREMITIES = 1, 2
LIVER, STOMACH, ESOPHAGUS, TRACHEA = 5, 6, 15, 16
PULMONARY_VEIN, ATRIAL_APPENDAGE_LEFT, SUPERIOR_VENA_CAVA, INFERIOR_VENA_CAVA = 53, 61, 62, 63
RIBS_LEFT: dict[str, int] = {f"rib_left_{i}": 91 + i for i in range(1, 13)}  # 92 ... 103
RIBS_RIGHT: dict[str, int] = {f"rib_right_{i}": 103 + i for i in range(1, 13)}  # 104 ... 115
STERNUM, COSTAL_CARTILAGES = 116, 117
THORACIC_VERTEBRAE: dict[str, int] = {f"vertebrae_T{i}": 44 - i for i in range(1, 13)}

# The organs, in the order of their bits in the cached mask volume (bit i = ORGANS[i]).
ORGANS: tuple[str, ...] = ("body", "lungs", "heart", "aorta", "spine")
ORGAN_LABEL_MAPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "body": (TS_BODY, (BODY_TRUNC, BODY_EXTREMITIES)),
    "lungs": (TS_TOTAL, tuple(sorted(LUNG_LOBES.values()))),
    "heart": (TS_TOTAL, (HEART,)),
    "aorta": (TS_TOTAL, (AORTA,)),
    "spine": (TS_TOTAL, tuple(sorted(VERTEBRAE.values()))),
}


# Uniferum's fine organ tasks (Suppl. Tab. 1): organ name -> the ``total`` class ids whose union it is.
# 51 of its 53 single classes, then 4 of its 5 unions; "Cardiac organ", "Thoracic aorta" and the union
# "Lungs" are the bit-field organs ``heart`` / ``aorta`` / ``lungs`` (the same voxels).
TS_ORGAN_IDS: dict[str, tuple[int, ...]] = {
    "liver": (LIVER,),
    "stomach": (STOMACH,),
    **{name: (i,) for name, i in LUNG_LOBES.items()},
    "esophagus": (ESOPHAGUS,),
    "trachea": (TRACHEA,),
    **{name: (i,) for name, i in THORACIC_VERTEBRAE.items()},
    "pulmonary_vein": (PULMONARY_VEIN,),
    "atrial_appendage_left": (ATRIAL_APPENDAGE_LEFT,),
    "superior_vena_cava": (SUPERIOR_VENA_CAVA,),
    "inferior_vena_cava": (INFERIOR_VENA_CAVA,),
    **{name: (i,) for name, i in RIBS_LEFT.items()},
    **{name: (i,) for name, i in RIBS_RIGHT.items()},
    "sternum": (STERNUM,),
    "costal_cartilages": (COSTAL_CARTILAGES,),
    "thoracic_vertebrae": tuple(sorted(THORACIC_VERTEBRAE.values())),
    "ribs": tuple(sorted({*RIBS_LEFT.values(), *RIBS_RIGHT.values()})),
    "ribs_left": tuple(sorted(RIBS_LEFT.values())),
    "ribs_right": tuple(sorted(RIBS_RIGHT.values())),
}
# The segmentation organs of the paper configs: Suppl. Tab. 1's 58 named tasks (53 classes, 5 unions)
# plus the body outline, ours. The paper counts 60 tasks, 7 of them unions, but names only 5 unions.
UNIFERUM_PAPER_ORGANS: tuple[str, ...] = ("body", "lungs", "heart", "aorta", *TS_ORGAN_IDS)
SEGMENTATION_ORGANS: tuple[str, ...] = (*ORGANS, *TS_ORGAN_IDS)  # every organ a task may name


def ct_rate_ts_total(root: Path, volume_path: Path) -> Path | None:
    """CT-RATE's TotalSegmentator ``total`` label map of one volume, if the file exists."""
    path = ct_rate_mask_path(root, TS_TOTAL, volume_path)
    return path if path.is_file() else None


def ct_rate_mask_path(root: Path, task: str, volume_path: Path) -> Path:
    """Where CT-RATE keeps the ``task`` label map of the volume at ``volume_path`` (under ``root``)."""
    relative = Path(volume_path).relative_to(root)
    return Path(root) / TS_SEG_DIR / task / relative


def ct_rate_masks(root: Path, volume_path: Path) -> dict[str, MaskSource]:
    """The organ masks available for one CT-RATE volume (organs whose label map file exists)."""
    present = {
        task: path
        for task in {task for task, _ in ORGAN_LABEL_MAPS.values()}
        if (path := ct_rate_mask_path(root, task, volume_path)).is_file()
    }
    return {
        organ: MaskSource(path=present[task], label_ids=ids)
        for organ, (task, ids) in ORGAN_LABEL_MAPS.items()
        if task in present
    }
