from dataclasses import dataclass

import pytest

from datamodules.splits import assign_splits


@dataclass
class Entry:
    patient_id: str
    split: str


def test_val_is_carved_by_patient_and_test_is_official() -> None:
    entries = [Entry(f"train_{p}", "train") for p in range(20) for _ in range(3)]
    entries += [Entry(f"valid_{p}", "test") for p in range(5)]
    splits = assign_splits(entries, val_patients=4, seed=0)
    train_patients = {e.patient_id for e in splits["train"]}
    val_patients = {e.patient_id for e in splits["val"]}
    assert len(val_patients) == 4 and not train_patients & val_patients
    assert len(splits["val"]) == 12 and len(splits["train"]) == 48 and len(splits["test"]) == 5
    assert assign_splits(entries, 4, seed=0)["val"] == splits["val"]  # deterministic


def test_too_many_val_patients() -> None:
    with pytest.raises(ValueError, match="val_patients"):
        assign_splits([Entry("a", "train")], val_patients=1)
