"""GreenRFM (module greenrfm) end to end through the real CLI on the session phantom: both stages
in one `ctvlp fit`, read back from TensorBoard and results.json, and `ctvlp eval` on its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main

# 160 steps of cpu_demo's GreenRFM (stage 2 from step 80; about 4.5 min on 2 idle cores). At 80
# steps nothing had left chance (classifier 0.50, five-prompt mean 0.52); at 160 the five prompts
# score 0.53-0.58 on the session phantom's 57 test volumes (mean 0.54, retrieval R@5 1.4x chance).
# make demo's 300-step run on 800 scans is in the README.
STEPS = 160
BOUNDARY = STEPS // 2


@pytest.fixture(scope="module")
def green_run(phantom_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs_dir = tmp_path_factory.mktemp("greenrfm_runs")
    arguments = [
        "fit", "greenrfm", "--profile", "cpu_demo", *phantom_overrides, f"runs_dir={runs_dir}",
        f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={BOUNDARY}", "trainer.log_every_n_steps=5",
        f"trainer.checkpoint_every_n_steps={BOUNDARY}",  # last.ckpt holds the final weights fit evaluated
    ]  # fmt: skip
    assert main(arguments) == 0
    (run,) = sorted((runs_dir / "greenrfm").glob("version_*"))
    return run


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _mean(values: list[tuple[int, float]]) -> float:
    return sum(v for _, v in values) / len(values)


def test_both_stages_run_in_one_fit(green_run: Path) -> None:
    scalars = _scalars(green_run)
    stages = dict(scalars["train/stage"])
    assert {s for s, v in stages.items() if v == 1.0} == {s for s in stages if s < BOUNDARY}
    assert {s for s, v in stages.items() if v == 2.0} == {s for s in stages if s >= BOUNDARY}
    assert all(step >= BOUNDARY for step, _ in scalars["train/loss_clip"])  # CLIP: stage 2 only
    # (L_seg is stage 1's; Lightning repeats a metric's last value on the steps right after a
    # validation, so its logged steps can run a little past the boundary)
    # each stage's learning rates: cpu_demo's 1e-3 cosine-annealed in stage 1, 1e-4 flat in stage 2
    lr_image = dict(scalars["train/lr_image"])
    assert lr_image[min(lr_image)] == pytest.approx(1e-3, rel=0.05)
    assert {round(v, 9) for s, v in lr_image.items() if s >= BOUNDARY} == {1e-4}
    # learning: the coarse segmentation and the alignment losses fall within their stage
    seg = [(step, value) for step, value in scalars["train/loss_seg"] if step < BOUNDARY]
    clip = scalars["train/loss_clip"]
    assert _mean(seg[-3:]) < _mean(seg[:3]) - 0.05, seg
    assert _mean(clip[-3:]) < _mean(clip[:3]), clip


def test_zero_shot_leaves_chance_after_both_stages(green_run: Path) -> None:
    results = json.loads((green_run / "results.json").read_text(encoding="utf-8"))
    for prompt in ("p1", "p2", "p3", "p4", "p5", "mean"):
        for metric in ("AUROC", "ACC", "F1", "precision", "sensitivity", "specificity"):
            assert f"test/zeroshot_prompt_{prompt}/{metric}" in results
    # above chance after both stages: the mean over the paper's five prompt pairs, and at least four
    # of the five (57 test volumes: the bootstrap interval of the mean still reaches 0.5 at 160 steps)
    prompts = [results[f"test/zeroshot_prompt_p{i}/AUROC"] for i in range(1, 6)]
    assert results["test/zeroshot_prompt_mean/AUROC"] > 0.5, prompts
    assert sum(auroc > 0.5 for auroc in prompts) >= 4, prompts
    assert results["test/retrieval/R@5"] > results["test/retrieval/R@5_chance"]
    assert 0.5 < results["test/classifier/AUROC"] <= 1.0  # the stage-1 oracle


def test_eval_reads_a_greenrfm_checkpoint_by_dot_product(green_run: Path) -> None:
    fitted = json.loads((green_run / "results.json").read_text(encoding="utf-8"))
    code = main(["eval", "--ckpt", str(green_run), "--tasks", "retrieval,zeroshot_prompts", "--splits", "test",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    results = json.loads((green_run / "results.json").read_text(encoding="utf-8"))
    # the same weights scored the same way: eval and fit's own evaluation agree
    assert results["test/zeroshot_prompt_p1/AUROC"] == pytest.approx(
        fitted["test/zeroshot_prompt_p1/AUROC"], abs=1e-5
    )


@pytest.fixture(scope="module")
def demo_run(phantom_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """cpu_demo's whole GreenRFM run (300 steps, 150 + 150; about 9 min) on the session phantom."""
    runs_dir = tmp_path_factory.mktemp("greenrfm_demo")
    assert main(["fit", "greenrfm", "--profile", "cpu_demo", *phantom_overrides, f"runs_dir={runs_dir}"]) == 0
    (run,) = sorted((runs_dir / "greenrfm").glob("version_*"))
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    print(
        {k: round(v, 4) for k, v in results.items() if k.startswith("test/") and k.endswith(("AUROC", "R@5"))}
    )
    return results


@pytest.mark.slow
def test_demo_run_retrieves_and_scores_above_chance(demo_run: dict[str, float]) -> None:
    assert demo_run["test/retrieval/R@5"] >= 2 * demo_run["test/retrieval/R@5_chance"], demo_run
    assert demo_run["test/zeroshot_prompt_mean/AUROC_ci_low"] > 0.5, demo_run


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="GreenRFM's default prompt at CPU scale: on make demo's phantom P1 ('{p}.' / 'not {p}.') "
    "reaches test AUROC 0.51 (seed 0, 300 steps) and 0.53 (600 steps) against the stage-1 classifier's "
    "0.61 / 0.63; P2 ('{p}.' / '') 0.58 / 0.61. The frozen MiniLM's [CLS] of '{p}.' and 'not {p}.' "
    "have cosine 0.989 (P2's pair 0.75), so a linear projection barely separates them (README, "
    "docs/recipes.md)",
)
def test_demo_run_default_prompt_reaches_the_classifier(demo_run: dict[str, float]) -> None:
    p1, oracle = demo_run["test/zeroshot_prompt_p1/AUROC"], demo_run["test/classifier/AUROC"]
    assert p1 >= 0.70 or p1 >= oracle - 0.03, demo_run
