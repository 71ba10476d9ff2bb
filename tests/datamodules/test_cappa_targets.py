import random
from collections import Counter

import pytest
import torch

from datamodules.cappa_targets import IGNORE_INDEX, CapPaTargetBuilder, stack_examples
from datamodules.report_sections import SECTION_NAMES, assign_sections
from lightning_modules.nets.text_encoder import load_tokenizer

FINDINGS = (
    "Trachea and both main bronchi are open. Heart contour and size are normal. "
    "A 5 mm nodule is seen in the right lung upper lobe. Right pleural effusion is present. "
    "No lymph node was detected in the mediastinum. Degenerative changes in the thoracic vertebrae. "
    "The liver is normal. A central venous catheter is seen."
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def builder(tokenizer):
    return CapPaTargetBuilder(tokenizer, num_slots=160)


def test_length_does_not_depend_on_findings(builder):
    empty = builder({})
    full = builder(assign_sections(FINDINGS))
    for field in ("input_ids", "parallel_input_ids", "labels"):
        assert getattr(empty, field).shape == getattr(full, field).shape == (builder.length,)
    assert builder.length == builder.header_length + 160
    # No leak: the parallel input is identical for a normal and an abnormal report.
    torch.testing.assert_close(empty.parallel_input_ids, full.parallel_input_ids)
    torch.testing.assert_close(empty.header_ids, full.header_ids)
    # The same holds under the same shuffled order.
    shuffled_empty = builder({}, random.Random(3))
    shuffled_full = builder(assign_sections(FINDINGS), random.Random(3))
    torch.testing.assert_close(shuffled_empty.parallel_input_ids, shuffled_full.parallel_input_ids)


def test_headers_and_padding_excluded_from_loss(builder, tokenizer):
    sections = assign_sections(FINDINGS)
    example = builder(sections)
    labels = example.labels
    assert (labels[: builder.header_length] == IGNORE_INDEX).all()
    content = labels[builder.header_length :]
    real = content[content != IGNORE_INDEX]
    assert (content[: len(real)] != IGNORE_INDEX).all()
    assert (content[len(real) :] == IGNORE_INDEX).all()  # padding after the report
    # What is predicted: each section's sentences, then one separator; no header token at all.
    expected = []
    for name in SECTION_NAMES:
        expected += tokenizer(" ".join(sections[name]), add_special_tokens=False)["input_ids"]
        expected.append(tokenizer.sep_token_id)
    assert real.tolist() == expected
    assert (real == tokenizer.sep_token_id).sum().item() == len(SECTION_NAMES)
    header_tokens = set(example.header_ids.tolist()) - set(expected)
    assert header_tokens and not header_tokens & set(real.tolist())
    # The predicted tokens decode back to the structured report.
    decoded = builder.decode_sections(builder.slot_ids(labels))
    assert decoded["Pleura"] == "right pleural effusion is present."
    assert decoded["Image Quality"] == ""
    assert (
        builder.decode(builder.slot_ids(labels)).splitlines()[2]
        == "Pleura: right pleural effusion is present."
    )


def test_causal_input_is_target_shifted_right(builder):
    example = builder(assign_sections(FINDINGS), random.Random(0))
    target = torch.cat([example.header_ids, example.labels[builder.header_length :]])
    valid = target != IGNORE_INDEX
    assert example.input_ids[0].item() == builder.start_id
    torch.testing.assert_close(example.input_ids[1:][valid[:-1]], target[:-1][valid[:-1]])
    torch.testing.assert_close(example.input_ids[: builder.header_length + 1][1:], example.header_ids)


def test_parallel_slots_are_all_mask(builder, tokenizer):
    example = builder(assign_sections(FINDINGS), random.Random(1))
    slots = example.parallel_input_ids[builder.header_length :]
    assert builder.mask_token_id == len(tokenizer)
    assert (slots == builder.mask_token_id).all()
    torch.testing.assert_close(example.parallel_input_ids[: builder.header_length], example.header_ids)
    assert (example.input_ids != builder.mask_token_id).all()


def test_shuffle_changes_order_not_content(builder):
    sections = assign_sections(FINDINGS)
    canonical = builder(sections)
    assert canonical.section_order == SECTION_NAMES
    assert builder(sections, None).section_order == SECTION_NAMES
    shuffled = builder(sections, random.Random(7))
    assert shuffled.section_order != SECTION_NAMES
    assert sorted(shuffled.section_order) == sorted(SECTION_NAMES)
    assert not torch.equal(shuffled.header_ids, canonical.header_ids)
    assert not torch.equal(shuffled.labels, canonical.labels)
    assert Counter(shuffled.header_ids.tolist()) == Counter(canonical.header_ids.tolist())
    assert Counter(shuffled.labels.tolist()) == Counter(canonical.labels.tolist())
    # Same seed, same order (reproducible).
    assert builder(sections, random.Random(7)).section_order == shuffled.section_order


def test_truncation_to_num_slots(tokenizer):
    small = CapPaTargetBuilder(tokenizer, num_slots=20)
    example = small(assign_sections(FINDINGS * 3))
    assert example.labels.shape == (small.length,)
    assert (example.labels[small.header_length :] != IGNORE_INDEX).all()
    decoded = small.decode_sections(small.slot_ids(example.labels))
    assert decoded["Image Quality"] == "" and decoded["Lungs and Airways"].startswith("trachea")
    assert decoded["Upper Abdomen"] == ""  # cut off


def test_explicit_order_and_decoding_in_that_order(builder):
    sections = assign_sections(FINDINGS)
    order = tuple(reversed(SECTION_NAMES))
    example = builder(sections, order=order)
    assert example.section_order == order
    torch.testing.assert_close(example.header_ids, torch.tensor(builder.header_block(order)))
    decoded = builder.decode_sections(builder.slot_ids(example.labels), order)
    assert tuple(decoded) == order
    canonical = builder.decode_sections(builder.slot_ids(builder(sections).labels))
    assert decoded == canonical  # same content whatever the order
    with pytest.raises(ValueError, match="permutation"):
        builder(sections, order=SECTION_NAMES[:-1])
    # Generated ids may hold mask tokens and run past the eighth separator: both are dropped.
    ids = [*builder.slot_ids(example.labels), builder.mask_token_id, 1000, builder.sep_id, 2000]
    assert builder.decode_sections(ids, order) == decoded


def test_unknown_section_and_stacking(builder):
    with pytest.raises(ValueError, match="Unknown sections.*Upper Abdomen"):
        builder({"Lungs": ["x."]})
    batch = stack_examples([builder({}), builder(assign_sections(FINDINGS), random.Random(0))])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, builder.length)
    assert batch["header_ids"].shape == (2, builder.header_length)
    assert len(batch["section_order"]) == 2
