"""Report generation end to end through `ctvlp fit` on the phantom CT-RATE: COLIPRI-CR
(CLIP + CapPa) and captioning-only CapPa pretraining, read back from TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from datamodules.report_sections import SECTION_NAMES

STEPS = 8
# cpu_demo made smaller still: a dozen logged steps, one short validation with its text samples.
SHORT_RUN = [
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "optim.warmup_steps=2",
    "optim.lr=3e-3",
    "data.batch_size=4",
    "data.crop_size=32",
    "model.text.max_length=32",
    "objectives.rrg.slots=32",
    "objectives.rrg.log_reports=2",
    "evaluation.every_n_steps=0",
    "evaluation.preview_volumes=0",
    "evaluation.final_splits=[]",
]


def _fit(experiment: str, runs_dir: Path, overrides: list[str]) -> Path:
    arguments = ["fit", experiment, "--profile", "cpu_demo", *overrides, f"runs_dir={runs_dir}"]
    assert main(arguments) == 0
    (run,) = sorted((runs_dir / experiment).glob("version_*"))
    return run


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _values(events: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in events.Scalars(tag)]


def _report_texts(events: EventAccumulator) -> dict[str, str]:
    tags = [tag for tag in events.Tags()["tensors"] if tag.startswith("reports/")]
    return {tag: events.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in tags}


def _check_report_samples(events: EventAccumulator, volumes: int, modes: tuple[str, ...]) -> None:
    texts = _report_texts(events)
    assert len(texts) == volumes, sorted(texts)
    for text in texts.values():
        assert text.startswith("**reference**")
        for mode in modes:
            assert f"**{mode} (greedy)**" in text
        # Reference and each generated report: one line per section.
        for name in SECTION_NAMES:
            assert text.count(f"    {name}:") == 1 + len(modes), text
        # what the labeller reads in each, and each mode's clinical F1 over the logged volumes
        assert "_labeller_: reference: " in text and all(f"{mode} (greedy): " in text for mode in modes)
    for mode in modes:
        assert f"val/report_samples/{mode}/clinical_F1_micro" in events.Tags()["scalars"]


def test_colipri_cr_rrg_loss_falls_with_a_fixed_seed(phantom_overrides: list[str], tmp_path: Path) -> None:
    run = _fit("colipri_cr", tmp_path, [*phantom_overrides, *SHORT_RUN])
    events = _events(run)
    rrg = _values(events, "train/loss_rrg")
    clip = _values(events, "train/loss_clip")
    total = _values(events, "train/loss")
    assert len(rrg) == len(clip) == len(total) == STEPS
    # Step 0 is about ln(vocabulary) (30522 MiniLM tokens): an untrained decoder.
    assert rrg[0] == pytest.approx(torch.log(torch.tensor(30522.0)).item(), abs=0.6)
    assert rrg[-1] < rrg[0] - 1.0, rrg
    assert max(rrg[-2:]) < min(rrg[:2]), rrg
    # Total = L_CLIP + 0.3 L_RRG, step by step.
    for t, c, r in zip(total, clip, rrg, strict=True):
        assert t == pytest.approx(c + 0.3 * r, rel=1e-4)
    assert _values(events, "val/rrg/loss")[-1] < rrg[0] - 1.0
    assert "val/retrieval/R@5" in events.Tags()["scalars"]
    # Parallel-only training (parallel_prob 1.0): the parallel greedy report beside the reference.
    _check_report_samples(events, volumes=2, modes=("parallel",))


def test_cappa_pretraining_without_a_text_encoder(phantom_overrides: list[str], tmp_path: Path) -> None:
    overrides = [
        *phantom_overrides,
        *SHORT_RUN,
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.checkpoint_every_n_steps=4",
        "objectives.rrg.parallel_prob=0.5",
        "objectives.rrg.slots=24",
        "objectives.rrg.log_reports=1",
    ]
    run = _fit("cappa", tmp_path, overrides)
    events = _events(run)
    torch.testing.assert_close(
        torch.tensor(_values(events, "train/loss")), torch.tensor(_values(events, "train/loss_rrg"))
    )
    assert "train/loss_clip" not in events.Tags()["scalars"]
    assert len(_values(events, "val/rrg/loss")) >= 1
    # The best checkpoint follows the RRG validation loss (there is no retrieval to follow).
    assert any(p.name.startswith("best-step") for p in (run / "checkpoints").iterdir())
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    names = checkpoint["state_dict"].keys()
    assert any(n.startswith("rrg_head.") for n in names)
    assert any(n.startswith("image_encoder.") for n in names)
    assert not any(n.startswith("text_encoder.") for n in names)
    # Both modes trained: both greedy reports are logged (causal is autoregressive).
    _check_report_samples(events, volumes=1, modes=("parallel", "causal"))
    # ctvlp eval scores CapPa's greedy reports as every generator's (reports CSV, reportgen keys)
    out = tmp_path / "eval"
    code = main(["eval", "--ckpt", str(run), "--tasks", "reportgen", "--splits", "test", "--out", str(out),
                 "evaluation.bootstrap_resamples=0", "--no-progress"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert 0.0 <= results["test/reportgen/clinical_F1_micro"] <= 1.0 and "test/reportgen/BLEU-4" in results
    assert (out / "reports_test.csv").read_text(encoding="utf-8").startswith("id,reference,generated")


def _check_both_losses_go_down(run: Path) -> None:
    """RRG falls from ln(vocabulary) to the phantom's report statistics; CLIP falls below ln(batch)
    (chance). The CLIP margin is small: COLIPRI-C itself barely moves below ln(batch) in 300
    cpu_demo steps, so the check is that it does not stay at chance, not that it learns much."""
    events = _events(run)
    rrg = _values(events, "train/loss_rrg")
    assert sum(rrg[-5:]) / 5 < sum(rrg[:3]) / 3 - 3.0, rrg
    clip = _values(events, "train/loss_clip")
    last = sum(clip[-5:]) / 5
    assert last < sum(clip[:3]) / 3 - 0.1, clip
    assert last < math.log(8) - 0.05, clip  # cpu_demo batch 8
    _check_report_samples(events, volumes=2, modes=("parallel",))
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["val/retrieval/R@5"] > results["val/retrieval/R@5_chance"], results


@pytest.mark.slow
def test_colipri_cr_cpu_demo_both_losses_go_down(phantom_overrides: list[str], tmp_path: Path) -> None:
    """The cpu_demo COLIPRI-CR recipe at 300 steps (full phantom reports)."""
    overrides = [
        *phantom_overrides,
        "trainer.max_steps=300",
        "trainer.val_check_interval=100",
        "evaluation.every_n_steps=0",
        "evaluation.final_splits=[val]",
    ]
    _check_both_losses_go_down(_fit("colipri_cr", tmp_path, overrides))
