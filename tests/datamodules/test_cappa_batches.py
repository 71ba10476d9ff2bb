"""``sections`` and the CapPa targets in the batch dict, on the phantom CT-RATE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctvlp.config.loader import load_experiment
from datamodules.cappa_targets import IGNORE_INDEX
from datamodules.report_sections import SECTION_NAMES, load_structured_sections, report_sections
from lightning_modules.base import ObjectiveModule


def _datamodule(phantom_overrides: list[str], experiment: str = "colipri_cr", extra: tuple[str, ...] = ()):
    cfg = load_experiment(experiment, "cpu_demo", [*phantom_overrides, *extra])
    datamodule = ObjectiveModule.build_datamodule(cfg)
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def datamodule(phantom_overrides):
    return _datamodule(phantom_overrides)


def test_training_order_is_shuffled_per_sample_as_a_function_of_seed_epoch_index(datamodule, phantom_root):
    train = datamodule.datasets["train"]
    entry = train.entries[0]
    # the phantom writes its own sections sidecar (what `ctvlp annotate` would), read in place of the rules
    structured = load_structured_sections(phantom_root / "structured_findings.json")
    expected = report_sections(entry.id, entry.sections["findings"], structured)
    assert entry.id in structured
    orders = set()
    for epoch in range(6):
        sample = train[(0, epoch)]
        assert sample["sections"] == train[(0, epoch)]["sections"]  # pure function of the key
        assert list(sample["sections"]) == list(train[(0, epoch)]["sections"])
        assert sorted(sample["sections"]) == sorted(SECTION_NAMES)
        assert {name: sample["sections"][name] for name in SECTION_NAMES} == expected  # content kept
        orders.add(tuple(sample["sections"]))
    assert len(orders) > 1
    # Evaluation: canonical order.
    val = datamodule.datasets["val"]
    assert tuple(val[0]["sections"]) == SECTION_NAMES
    assert tuple(val[0]["sections"]) == tuple(val[0]["sections"])


def test_collated_cappa_targets_follow_each_samples_order(datamodule):
    train = datamodule.datasets["train"]
    samples = [train[(i, 1)] for i in range(3)]
    batch = datamodule.collate(samples)
    targets = datamodule.collate.cappa_targets
    cappa = batch["cappa"]
    length = targets.header_length + int(targets.num_slots)
    assert (
        cappa["input_ids"].shape == cappa["parallel_input_ids"].shape == cappa["labels"].shape == (3, length)
    )
    assert cappa["header_ids"].shape == (3, targets.header_length)
    for i, sample in enumerate(samples):
        order = tuple(sample["sections"])
        assert batch["sections"][i] is not None and tuple(batch["sections"][i]) == order
        torch.testing.assert_close(cappa["header_ids"][i], torch.tensor(targets.header_block(order)))
        assert (cappa["labels"][i, : targets.header_length] == IGNORE_INDEX).all()
        decoded = targets.decode_sections(targets.slot_ids(cappa["labels"][i]), order)
        assert tuple(decoded) == order
        lungs = " ".join(sample["sections"]["Lungs and Airways"]).lower()
        assert decoded["Lungs and Airways"].replace(" - ", "-") == lungs.replace(" - ", "-")


def test_no_cappa_targets_without_rrg(phantom_overrides):
    datamodule = _datamodule(phantom_overrides, "colipri_c")
    batch = datamodule.collate([datamodule.datasets["val"][0]])
    assert "cappa" not in batch and tuple(batch["sections"][0]) == SECTION_NAMES


def test_structured_sidecar_overrides_the_keyword_rules(phantom_overrides, tmp_path: Path):
    plain = _datamodule(phantom_overrides, "colipri_c")
    entry = plain.datasets["val"].entries[0]
    sidecar = tmp_path / "structured.json"
    sidecar.write_text(
        json.dumps({f"{entry.id}.nii.gz": {"Tubes, Lines, and Devices": ["A port."]}}), encoding="utf-8"
    )
    structured = _datamodule(
        phantom_overrides, "colipri_c", (f"data.text.structured_findings_json={sidecar}",)
    )
    sections = structured.datasets["val"][0]["sections"]
    assert sections["Tubes Lines and Devices"] == ["A port."]
    assert sections["Lungs and Airways"] == []
    assert plain.datasets["val"][0]["sections"][
        "Lungs and Airways"
    ]  # the phantom's own sidecar fills it otherwise
    with pytest.raises(FileNotFoundError, match="structured_findings_json"):
        _datamodule(
            phantom_overrides, "colipri_c", (f"data.text.structured_findings_json={tmp_path}/none.json",)
        )
