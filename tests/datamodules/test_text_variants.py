"""data.text.shuffles_per_report: at most K training texts per report, from a stream that stays a
pure function of (seed, epoch, index)."""

import random

import pytest

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from datamodules.text import ReportTransform, split_sentences
from lightning_modules.registry import module_class

FINDINGS = (
    "Heart size is normal. A 3.5 mm nodule is seen in the right lung. No pleural effusion. "
    "Trachea is midline. No lymphadenopathy. Mild emphysema."
)
SECTIONS = {"findings": FINDINGS, "impressions": "Right lung nodule."}
SHORTENED = {"v": {"positive": ["Right lung nodule."], "negative": ["No effusion.", "Normal heart."]}}


@pytest.mark.parametrize("variants", [1, 2, 3])
def test_at_most_k_texts_per_report_and_each_a_real_augmentation(variants: int) -> None:
    transform = ReportTransform("findings", True, 0.5, SHORTENED, shuffles_per_report=variants)
    rng = random.Random(0)
    texts = {transform("v", SECTIONS, rng) for _ in range(300)}
    assert len(texts) == variants  # 300 draws meet every variant
    allowed = [
        sorted(split_sentences(FINDINGS)),
        sorted(SHORTENED["v"]["positive"] + SHORTENED["v"]["negative"]),
    ]
    assert all(sorted(split_sentences(text)) in allowed for text in texts)
    # The variants are fixed per report: another stream meets the same ones, another report others.
    rng = random.Random(1)
    assert {transform("v", SECTIONS, rng) for _ in range(300)} == texts
    other = {transform("w", SECTIONS, rng) for _ in range(300)}
    assert other != texts
    # Unlimited (the paper): fresh draws.
    unlimited = ReportTransform("findings", True, 0.5, SHORTENED)
    assert len({unlimited("v", SECTIONS, rng) for _ in range(300)}) > 3 * variants


def test_negative_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="shuffles_per_report"):
        ReportTransform("findings", True, shuffles_per_report=-1)


def _train_texts(phantom_overrides: list[str], keys: list[tuple[int, int]]) -> list[str]:
    cfg = load_experiment(
        "colipri_c", "cpu_demo", [*phantom_overrides, "data.text.shuffles_per_report=2", "data.num_workers=0"]
    )
    datamodule = module_class(cfg.module).build_datamodule(cfg)
    datamodule.setup("fit")
    return [datamodule.datasets["train"][key]["report"] for key in keys]


def test_the_training_stream_stays_a_pure_function_of_seed_and_step(phantom_overrides: list[str]) -> None:
    epochs = range(8)
    keys = [(index, epoch) for index in (0, 1, 2) for epoch in epochs]
    first = _train_texts(phantom_overrides, keys)
    assert _train_texts(phantom_overrides, keys) == first  # a fresh DataModule: a resumed run
    for row in range(3):
        per_report = first[row * len(epochs) : (row + 1) * len(epochs)]
        assert len(set(per_report)) <= 2
    assert len(set(first)) > 3  # the reports differ and still vary between epochs


def test_the_config_refuses_negative_values() -> None:
    for override in ("data.text.shuffles_per_report=-1", "model.text.frozen_cache_mb=-5"):
        with pytest.raises(ConfigError, match="must be >= 0"):
            load_experiment("colipri_c", "cpu_demo", [override])
