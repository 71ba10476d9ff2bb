import random

import pytest

from datamodules.text import ReportTransform, load_shortened_findings, split_sentences

SECTIONS = {
    "findings": "Heart size is normal. A 3.5 mm nodule is seen in the right lung. No pleural effusion.",
    "impressions": "Right lung nodule.",
}


def test_split_sentences_keeps_decimals() -> None:
    assert split_sentences(SECTIONS["findings"]) == [
        "Heart size is normal.",
        "A 3.5 mm nodule is seen in the right lung.",
        "No pleural effusion.",
    ]


def test_section_choice() -> None:
    assert ReportTransform("impressions")("v", SECTIONS, None) == "Right lung nodule."
    both = ReportTransform("both")("v", SECTIONS, None)
    assert both.startswith("Heart size") and both.endswith("Right lung nodule.")
    with pytest.raises(ValueError, match="section"):
        ReportTransform("summary")


def test_sentence_shuffle_changes_order_not_content() -> None:
    transform = ReportTransform("findings", sentence_shuffle=True)
    original = split_sentences(SECTIONS["findings"])
    outputs = {transform("v", SECTIONS, random.Random(seed)) for seed in range(20)}
    assert len(outputs) > 1
    for text in outputs:
        assert sorted(split_sentences(text)) == sorted(original)
    # Evaluation (no rng) never shuffles.
    assert transform("v", SECTIONS, None) == SECTIONS["findings"]


def test_shortened_findings_replace_with_probability(tmp_path) -> None:
    sidecar = tmp_path / "short.json"
    sidecar.write_text(
        '{"v.nii.gz": {"positive": ["Right lung nodule."], "negative": ["No effusion."]}}', encoding="utf-8"
    )
    shortened = load_shortened_findings(sidecar)
    always = ReportTransform("findings", shorten_p=1.0, shortened=shortened)
    assert always("v", SECTIONS, random.Random(0)) == "Right lung nodule. No effusion."
    never = ReportTransform("findings", shorten_p=0.0, shortened=shortened)
    assert never("v", SECTIONS, random.Random(0)) == SECTIONS["findings"]
    quarter = ReportTransform("findings", shorten_p=0.25, shortened=shortened)
    rng = random.Random(0)
    replaced = sum(quarter("v", SECTIONS, rng) == "Right lung nodule. No effusion." for _ in range(2000))
    assert 400 < replaced < 600


def test_bad_sidecar_is_rejected(tmp_path) -> None:
    sidecar = tmp_path / "short.json"
    sidecar.write_text('{"v": {"positive": []}}', encoding="utf-8")
    with pytest.raises(ValueError, match="negative"):
        load_shortened_findings(sidecar)
