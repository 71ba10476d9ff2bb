"""End to end: MAE beside CLIP (+ RRG) through `ctvlp fit`, and MAE alone, on the phantoms.

- A four-step COLIPRI-CM run (default suite): the schedule switches MAE on at its step, the LR
  halves there, an image-only batch trains MAE only, vision-language steps never see one.
- COLIPRI-CRM as `make exp NAME=colipri_crm PROFILE=cpu_demo` runs it (slow, about 8 min): all
  three losses logged, MAE only in the last 25 % of steps, its masked-patch loss clearly below the
  mean predictor's, validation retrieval and zero-shot in results.json (`ctvlp eval` into the run
  directory), MAE reconstructions in TensorBoard.
- A short MAE-only run (slow): the masked-patch loss falls clearly below the mean predictor's.
- RadFound's CC-MIM (`radfound_ccmim`, default suite, 80 steps): MAE on two crops of each volume
  plus their InfoNCE; both losses logged to TensorBoard and both falling, validation logging both.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from lightning_modules.optim import WarmupDecay


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors on 2 shared cores: one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit(experiment: str, runs_dir: Path, overrides: list[str]) -> Path:
    arguments = ["fit", experiment, "--profile", "cpu_demo", f"runs_dir={runs_dir}", *overrides]
    assert main(arguments) == 0
    (run,) = sorted((runs_dir / experiment).glob("version_*"))
    return run


def _lr(run: Path) -> float:
    """The configured (cpu_demo) peak learning rate of a run."""
    return float(OmegaConf.load(run / "config.yaml").optim.lr)


def _scalars(run: Path) -> tuple[EventAccumulator, dict[str, dict[int, float]]]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    return events, scalars


def test_schedule_in_a_four_step_colipri_cm_run(
    phantom_overrides: list[str],
    phantom_root: Path,
    phantom_image_only_root: Path,
    tmp_path: Path,
    one_thread,
) -> None:
    # MAE from step 2 (of 0..3): steps 2 (MAE) and 3 (vision-language) alternate. The image-only
    # source weighs 100x, so the MAE step's batch is image-only.
    sources = (
        f"data.sources=[{{name: ct_rate, root: {phantom_root}, weight: 1}},"
        f" {{name: image_only, root: {phantom_image_only_root}, spacing: 3.0, weight: 100}}]"
    )
    run = _fit(
        "colipri_cm",
        tmp_path,
        [
            *phantom_overrides,
            sources,
            "trainer.max_steps=4",
            "optim.warmup_steps=1",
            "objectives.mae.start_fraction=0.5",
            "trainer.log_every_n_steps=1",
            "evaluation.every_n_steps=0",
            "evaluation.final_splits=[]",
        ],
    )
    _, scalars = _scalars(run)
    assert scalars["train/objective/mae"] == {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}
    assert scalars["train/objective/vision_language"] == {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}
    assert scalars["train/image_only_batch"] == {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}
    # Lightning re-writes a step's last logged value on later steps that do not log it again (here
    # the MAE loss at step 3), so the losses show from the first step that computes them on.
    assert min(scalars["train/loss_mae"]) == 2
    assert scalars["train/loss_mae"][2] != scalars["train/loss"][1]
    assert scalars["train/loss"][2] == pytest.approx(scalars["train/loss_mae"][2])  # MAE only (weight 1)
    assert scalars["train/loss"][3] == pytest.approx(scalars["train/loss_clip"][3])  # CLIP only
    base = WarmupDecay(warmup_steps=1, total_steps=4, schedule="poly")
    decoder_factor = float(OmegaConf.load(run / "config.yaml").objectives.mae.decoder_lr_factor)
    assert decoder_factor == 20.0  # cpu_demo: the decoder's 75 late steps train 20x faster
    for step, lr in scalars["train/lr"].items():
        assert lr == pytest.approx(_lr(run) * base(step) * (0.5 if step >= 2 else 1.0)), step
        decoder_lr = scalars["train/lr_mae_decoder"][step]
        assert decoder_lr == pytest.approx(decoder_factor * lr), step


@pytest.fixture(scope="module")
def crm_run(phantom_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """COLIPRI-CRM as `make exp NAME=colipri_crm PROFILE=cpu_demo` runs it (600 steps, MAE from
    step 450; 7.2 min on 2 idle cores) on the session phantom, then `ctvlp eval` of retrieval and
    zero-shot on the validation split into the run directory. Returns the run and the fit's minutes."""
    started = time.perf_counter()
    run = _fit("colipri_crm", tmp_path_factory.mktemp("runs"), list(phantom_overrides))
    minutes = (time.perf_counter() - started) / 60
    checkpoint = run / "checkpoints" / "last.ckpt"
    arguments = ["eval", "--ckpt", str(checkpoint), "--tasks", "retrieval,zeroshot", "--splits", "val"]
    assert main([*arguments, "--no-progress"]) == 0
    return run, minutes


@pytest.mark.slow
def test_colipri_crm_logs_three_losses_with_mae_in_the_last_quarter(crm_run: tuple[Path, float]) -> None:
    run, minutes = crm_run
    print(f"colipri_crm cpu_demo fit: {minutes:.1f} min")
    config = OmegaConf.load(run / "config.yaml")
    total = int(config.trainer.max_steps)
    start = round(0.75 * total)
    events, scalars = _scalars(run)
    for name in ("train/loss_clip", "train/loss_rrg", "train/loss_mae"):
        assert name in scalars, sorted(scalars)
    assert min(scalars["train/loss_mae"]) >= start
    assert max(scalars["train/loss_clip"]) > start  # vision-language steps go on, alternating
    for step, fraction in scalars["train/objective/mae"].items():
        # Logged windows of 10 steps: none before the switch, every other step after it.
        assert fraction == (0.0 if step < start else 0.5), (step, fraction)
    base = WarmupDecay(warmup_steps=int(config.optim.warmup_steps), total_steps=total, schedule="poly")
    for step, lr in scalars["train/lr"].items():
        assert lr == pytest.approx(_lr(run) * base(step) * (0.5 if step >= start else 1.0)), step
    assert {"val/mae/loss", "val/mae/loss_mean_predictor", "val/rrg/loss"} <= set(scalars)
    views = {tag.rsplit("/", 1)[-1] for tag in events.Tags()["images"] if tag.startswith("mae/")}
    assert views == {"axial", "coronal", "sagittal"}


@pytest.mark.slow
def test_colipri_crm_mae_falls_clearly_below_the_mean_predictor(crm_run: tuple[Path, float]) -> None:
    """75 alternating MAE steps in the schedule's tail: the decoder starts at the mean predictor
    (zero readout) and must end clearly below it (measured on val: 0.160 vs 0.252 on this
    300-scan phantom, 0.167 vs 0.252 on make demo's 800)."""
    results = json.loads((crm_run[0] / "results.json").read_text(encoding="utf-8"))
    for split in ("val", "test"):
        loss, reference = results[f"{split}/mae/loss"], results[f"{split}/mae/loss_mean_predictor"]
        print(f"CRM {split} MAE loss {loss:.4f} vs mean predictor {reference:.4f}")
        assert loss < 0.8 * reference, results


@pytest.mark.slow
def test_colipri_crm_results_have_validation_retrieval_and_zero_shot(crm_run: tuple[Path, float]) -> None:
    results = json.loads((crm_run[0] / "results.json").read_text(encoding="utf-8"))
    for key in (
        "val/retrieval/R@5",
        "val/retrieval/R@5_chance",
        "val/zeroshot_native/AUROC",
        "val/zeroshot_short/AUROC",
        "val/mae/loss",
        "val/mae/loss_mean_predictor",
    ):
        assert key in results, sorted(results)
    assert results["val/retrieval/R@5"] > results["val/retrieval/R@5_chance"], results


@pytest.mark.slow
def test_mae_alone_beats_the_mean_predictor(phantom_overrides: list[str], tmp_path: Path, one_thread) -> None:
    """The cpu_demo MAE run at 300 steps (about a minute with one thread)."""
    steps = ["trainer.max_steps=300", "trainer.val_check_interval=100"]
    run = _fit("mae", tmp_path, [*phantom_overrides, *steps, "evaluation.final_splits=[val]"])
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    loss, reference = results["val/mae/loss"], results["val/mae/loss_mean_predictor"]
    print(f"MAE val loss {loss:.4f} vs mean predictor {reference:.4f}")
    assert loss < 0.75 * reference, results
    _, scalars = _scalars(run)
    # Validations at steps 99, 199, 299 (step 0 holds the final metrics of the HParams tab).
    curve = [v for step, v in sorted(scalars["val/mae/loss"].items()) if 0 < step < 300]
    assert len(curve) == 3 and curve[-1] < 0.9 * curve[0], curve


def _window_means(curve: dict[int, float], width: int) -> tuple[float, float]:
    """The means of a logged curve's first and last ``width`` steps."""
    values = [value for _, value in sorted(curve.items())]
    assert len(values) >= 2 * width, curve
    return sum(values[:width]) / width, sum(values[-width:]) / width


def test_radfound_ccmim_trains_mae_and_cross_view_losses(
    phantom_root: Path, phantom_overrides: list[str], tmp_path: Path, one_thread
) -> None:
    """`radfound_ccmim --profile cpu_demo` for 80 steps: the MAE loss (mean of the two crops) and the
    cross-view InfoNCE are logged every step and both fall (mean of the last 15 steps against the
    first 15), and the validation logs the cross-view loss beside the MAE loss.

    Two overrides make 80 steps enough: CT-RATE alone (the 3 mm image-only phantom's 48-voxel
    crops of one chest can lie far apart, and its batches sit at other loss levels, so a mixed run's
    windows compare batch kinds more than steps) and optim.lr=1e-3 (at cpu_demo's 3e-4 the MAE
    decoder needs ~300 steps). Measured on the session phantom: MAE 0.223 -> 0.152, InfoNCE 2.05 ->
    1.78, below the chance level ln 8 = 2.08 (a 120-scan phantom: 0.227 -> 0.151, 2.14 -> 1.63).
    """
    steps = 80
    run = _fit(
        "radfound_ccmim",
        tmp_path,
        [
            *phantom_overrides,
            f"data.sources=[{{name: ct_rate, root: {phantom_root}}}]",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            "trainer.log_every_n_steps=1",
            "optim.lr=1e-3",
            "optim.warmup_steps=10",
            "evaluation.every_n_steps=0",
            "evaluation.final_splits=[]",
        ],
    )
    _, scalars = _scalars(run)
    config = OmegaConf.load(run / "config.yaml")
    weight = float(config.objectives.mae.cross_view.weight)
    for step in (0, steps - 1):
        total = scalars["train/loss_mae"][step] + weight * scalars["train/loss_cross_view"][step]
        assert scalars["train/loss"][step] == pytest.approx(total, rel=1e-5), step
    windows = {name: _window_means(scalars[name], 15) for name in ("train/loss_mae", "train/loss_cross_view")}
    for name, (first, last) in windows.items():
        print(f"{name}: first 15 steps {first:.4f}, last 15 {last:.4f}")
        assert last < 0.9 * first, (name, first, last)
    chance = math.log(int(config.data.batch_size))
    assert windows["train/loss_cross_view"][1] < chance, (windows, chance)
    assert {"val/mae/loss", "val/mae/loss_mean_predictor", "val/mae/cross_view_loss"} <= set(scalars)
