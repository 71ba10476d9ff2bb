"""Downstream report generation end to end through the real CLI on the session phantom: `ctvlp tiny-lm`
(the session's ``tiny_lm`` fixture) writes a random Qwen2 with a tokenizer trained on the training reports, `ctvlp fit reportgen_*`
trains it on the frozen encoder of the session's COLIPRI-C run, and `ctvlp eval --tasks reportgen`
scores the checkpoint the same way fit did."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctvlp.cli import main
from ctvlp.config.loader import load_experiment
from lightning_modules.report_generation import ReportGenerationModule

METRICS = ("BLEU-1", "BLEU-4", "ROUGE-L", "CRG", "clinical_F1_micro", "clinical_F1_macro")


def _fit(experiment: str, overrides: list[str], runs_dir: Path) -> Path:
    assert main(["fit", experiment, "--profile", "cpu_demo", *overrides, f"runs_dir={runs_dir}"]) == 0
    (run,) = sorted((runs_dir / experiment).glob("version_*"))
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


# The default suite fits the LLaVA recipe; the other projectors' recipes are slow here (their
# projectors train and generate in tests/lightning_modules/test_report_generation.py).
@pytest.mark.parametrize(
    "experiment",
    [
        "reportgen_llava",
        pytest.param("reportgen_radfm", marks=pytest.mark.slow),
        pytest.param("reportgen_qformer", marks=pytest.mark.slow),
    ],
)
def test_fit_writes_scored_reports_and_eval_agrees(
    experiment: str, phantom_overrides: list[str], trained_run: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    short = [
        f"reportgen.encoder_ckpt={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"reportgen.lm.name_or_path={tiny_lm}",
        "trainer.max_steps=6", "trainer.val_check_interval=6", "optim.warmup_steps=1",
        "trainer.log_every_n_steps=1", "data.batch_size=4", "reportgen.max_new_tokens=8",
        "reportgen.log_reports=1", "evaluation.final_splits=[test]", "evaluation.bootstrap_resamples=0",
    ]  # fmt: skip
    run = _fit(experiment, [*phantom_overrides, *short], tmp_path)
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    for metric in METRICS:
        assert f"test/reportgen/{metric}" in results
        assert f"test/reportgen_baseline/{metric}" in results
    assert "test/reportgen/METEOR" in results or "test/reportgen/METEOR_no_synonyms" in results
    rows = _rows(run / "reports_test.csv")
    assert rows and all(r["reference"].strip() for r in rows) and len({r["id"] for r in rows}) == len(rows)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 6 and losses[-1] < losses[0]  # a random LM learns the first tokens fast
    assert any(tag.startswith("reports/") for tag in events.Tags()["tensors"])  # generated beside reference
    # the profile's token cache: on, and the matched image explains the reports no worse than another's
    assert "train/token_cache_hit_rate" in events.Tags()["scalars"]
    assert "test/reportgen/loss_other_image" in results
    # ctvlp eval on the checkpoint: the same keys, the same reports
    out = tmp_path / "eval"
    code = main(["eval", "--ckpt", str(run), "--tasks", "reportgen", "--splits", "test", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    evaluated = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert evaluated["test/reportgen/BLEU-1"] == pytest.approx(results["test/reportgen/BLEU-1"], abs=1e-6)
    assert [r["generated"] for r in _rows(out / "reports_test.csv")] == [r["generated"] for r in rows]


def test_eval_reportgen_refuses_an_encoder_without_a_decoder(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "--ckpt", str(trained_run), "--tasks", "reportgen", "--splits", "test",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "generates no reports" in capsys.readouterr().err


def test_token_cache_trains_on_the_centre_crop(phantom_overrides: list[str], tiny_lm: Path) -> None:
    """With the frozen encoder's token cache (the cpu_demo profile) a training sample is the same
    centre crop at every epoch, the evaluation crop; without it, crops are drawn at random."""
    crops = {}
    for budget in (512, 0):
        cfg = load_experiment(
            "reportgen_llava",
            "cpu_demo",
            [*phantom_overrides, f"reportgen.lm.name_or_path={tiny_lm}", f"reportgen.token_cache_mb={budget}",
             "reportgen.encoder_ckpt=null"],
        )  # fmt: skip
        datamodule = ReportGenerationModule.build_datamodule(cfg)
        datamodule.setup("fit")
        train = datamodule.datasets["train"]
        # epochs 0 and 1 of the first training volume, and its evaluation (centre) crop
        crops[budget] = [train[(0, 0)]["image"], train[(0, 1)]["image"], train[0]["image"]]
    cached, drawn = crops[512], crops[0]
    assert torch.equal(cached[0], cached[1]) and torch.equal(cached[0], cached[2])
    assert not torch.equal(drawn[0], drawn[1])
