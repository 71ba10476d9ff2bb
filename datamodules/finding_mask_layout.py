"""Where masks of the findings (CT-RATE labels) of a volume are stored beside the volumes, and how
their label values map to label names.

Layout under the CT-RATE root (the phantom writes it; for real CT-RATE supply your own masks in
the same layout)::

    finding_masks/labels.json                                 {"<value>": "<CT-RATE label name>"}
    finding_masks/train_fixed/train_<pid>/train_<pid>_<scan>/train_<pid>_<scan>_<recon>.nii.gz
    finding_masks/valid_fixed/...

One uint8 label map per volume, stored exactly like its volume (same array orientation, same
header, same relative path): value v marks the voxels that show the finding ``labels.json[v]``,
0 the rest. A finding without a spatial extent (Cardiomegaly, a size) has no value. The values
are the label's position in ``CT_RATE_LABELS`` plus one.

No torch here: the phantom's writer processes import this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from datamodules.labels import CT_RATE_LABELS

FINDING_MASKS_DIR = "finding_masks"
LABELS_NAME = "labels.json"
FINDING_LABEL_VALUES: dict[str, int] = {name: i + 1 for i, name in enumerate(CT_RATE_LABELS)}
EXPECTED_LAYOUT = (
    f"<data root>/{FINDING_MASKS_DIR}/{LABELS_NAME} ({{value: CT-RATE label name}}) and one uint8 "
    f"NIfTI label map per volume at <data root>/{FINDING_MASKS_DIR}/<the volume's path under the "
    "data root>, on the volume's voxel grid with its header"
)


class FindingMasksMissingError(FileNotFoundError):
    """The data has no finding masks; the message says what layout is expected."""


class BadFindingMaskError(ValueError):
    """A finding mask cannot be read or does not land on its volume's cached grid."""


def finding_mask_path(root: Path, volume_path: Path) -> Path:
    """Where the finding mask of the volume at ``volume_path`` (under ``root``) is stored."""
    return Path(root) / FINDING_MASKS_DIR / Path(volume_path).relative_to(root)


def finding_label_map(findings: Mapping[str, np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """Label -> boolean mask (disjoint) as one uint8 label map with :data:`FINDING_LABEL_VALUES`."""
    out = np.zeros(tuple(shape), dtype=np.uint8)
    for label, mask in findings.items():
        out[mask] = FINDING_LABEL_VALUES[label]
    return out


def write_label_names(root: Path, labels: Sequence[str]) -> None:
    """``finding_masks/labels.json`` for the finding labels ``labels``."""
    folder = Path(root) / FINDING_MASKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = {str(FINDING_LABEL_VALUES[label]): label for label in labels}
    (folder / LABELS_NAME).write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")


def read_label_names(root: Path) -> dict[int, str]:
    """Value -> label name of the finding masks under ``root``; FindingMasksMissingError if none."""
    path = Path(root) / FINDING_MASKS_DIR / LABELS_NAME
    if not path.is_file():
        raise FindingMasksMissingError(
            f"No finding masks under {root} ({path} is missing). The phantom (`ctvlp phantom`) writes "
            f"them; real data needs masks supplied as {EXPECTED_LAYOUT}."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        names = {int(value): str(name) for value, name in raw.items()}
    except (ValueError, AttributeError) as error:
        raise BadFindingMaskError(f"{path} is not a JSON object {{value: label name}}: {error}") from error
    unknown = sorted(set(names.values()) - set(CT_RATE_LABELS))
    if unknown:
        raise BadFindingMaskError(f"{path} names labels that are not CT-RATE labels: {unknown}")
    return names


def present_labels(labels: np.ndarray, values: Mapping[int, str]) -> set[str]:
    """The label names whose value occurs in the label map ``labels``."""
    return {values[int(v)] for v in np.unique(labels) if int(v) in values}
