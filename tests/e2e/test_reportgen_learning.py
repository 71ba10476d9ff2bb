"""Visual information reaches the generated reports: `ctvlp fit reportgen_llava --profile cpu_demo`
on the session phantom (300 scans; its test split has 57 volumes), 400 steps, from the frozen
encoder of the session's COLIPRI-C run (default suite) or from a random one (slow).

The greedy reports are labelled by the rule-based labeller. Pleural effusion, a large finding that
is visible at 6 mm, must be named with a precision well above its prevalence, which only the image
can give: the "most frequent training report" baseline names the same findings for every volume,
so its precision is the prevalence. Measured on the AVX-512 development machine, seed 0: pleural
effusion precision 1.00 / recall 0.60 from the COLIPRI-C encoder and 0.92 / 0.60 from a random one
(prevalence 0.35); clinical micro-F1 0.217 and 0.211 against the baseline's 0.154; the loss with
each report paired with another volume's image 0.446 against 0.442 matched. At this scale the
random encoder, whose tokens still carry the voxels, serves about as well as the weakly pretrained
one (probe macro AUROC ~0.6 after a few hundred CPU steps), so the two are not ranked here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ctvlp.cli import main
from datamodules.labels import CT_RATE_LABELS
from datamodules.report_labeller import label_reports

STEPS = 400
PLEURAL_EFFUSION = CT_RATE_LABELS.index("Pleural effusion")


def _precision_recall_prevalence(reports_csv: Path, label: int) -> tuple[float, float, float]:
    with reports_csv.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    reference = label_reports([r["reference"] for r in rows])[:, label]
    generated = label_reports([r["generated"] for r in rows])[:, label]
    hits = float(np.sum(reference & generated))
    return hits / max(int(generated.sum()), 1), hits / max(int(reference.sum()), 1), float(reference.mean())


@pytest.mark.parametrize("encoder", ["colipri_c", pytest.param("random", marks=pytest.mark.slow)])
def test_generated_reports_name_what_the_image_shows(
    encoder: str, phantom_overrides: list[str], trained_run: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    checkpoint = trained_run / "checkpoints" / "last.ckpt" if encoder == "colipri_c" else "null"
    overrides = [
        *phantom_overrides, f"reportgen.lm.name_or_path={tiny_lm}", f"reportgen.encoder_ckpt={checkpoint}",
        f"trainer.max_steps={STEPS}", "trainer.val_check_interval=200", "reportgen.term_weight=3.0",
        "evaluation.final_splits=[test]", "evaluation.bootstrap_resamples=0", f"runs_dir={tmp_path}",
    ]  # fmt: skip
    assert main(["fit", "reportgen_llava", "--profile", "cpu_demo", *overrides]) == 0
    (run,) = sorted((tmp_path / "reportgen_llava").glob("version_*"))
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    precision, recall, prevalence = _precision_recall_prevalence(run / "reports_test.csv", PLEURAL_EFFUSION)
    assert 0.2 < prevalence < 0.5  # the phantom draws it in about a third of the volumes
    assert precision >= max(0.6, 1.5 * prevalence) and recall >= 0.3, (precision, recall, prevalence)
    f1 = "clinical_F1_micro"
    assert results[f"test/reportgen/{f1}"] > results[f"test/reportgen_baseline/{f1}"]
    # the LM reads the image: another volume's image explains the reports worse
    assert results["test/reportgen/loss_other_image"] > results["test/reportgen/loss"]
