"""Which metric and direction pick the best checkpoint (ctvlp/model_selection.py)."""

from __future__ import annotations

import pytest

from ctvlp.config.loader import load_experiment
from ctvlp.model_selection import Selection, inferred_mode, model_selection


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("val/retrieval/MnR", "min"),
        ("val/rrg/loss", "min"),
        ("val/mae/loss_masked", "min"),
        ("val/retrieval/R@5", "max"),
        ("val/seg/dice_mean", "max"),
        ("val/diagnosis.lossy_task/auroc", "max"),  # 'loss' elsewhere in the name does not count
    ],
)
def test_mode_is_inferred_from_the_metric_name(metric: str, mode: str) -> None:
    assert inferred_mode(metric) == mode


def test_selection_defaults_to_the_module_and_follows_the_config() -> None:
    def selection(experiment: str, *overrides: str) -> Selection:
        return model_selection(load_experiment(experiment, profile="cpu_demo", overrides=list(overrides)))

    assert selection("colipri_c") == Selection("val/retrieval/R@5", "max", False)
    assert selection("mae") == Selection("val/mae/loss", "min", False)
    assert selection("uniferum_seg") == Selection("val/diagnosis/auroc_mean", "max", False)
    assert selection("colipri_c", "trainer.best_metric=val/retrieval/MnR") == Selection(
        "val/retrieval/MnR", "min", True
    )
    assert selection("uniferum_seg", "trainer.best_metric=val/seg/dice_mean") == Selection(
        "val/seg/dice_mean", "max", True
    )
    # An explicit mode wins over the inferred one.
    assert selection("colipri_c", "trainer.best_metric=val/retrieval/MnR", "trainer.best_mode=max") == (
        Selection("val/retrieval/MnR", "max", True)
    )
