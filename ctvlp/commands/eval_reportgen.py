"""``ctvlp eval --tasks reportgen``: every report generator scored the same way.

- A CapPa decoder (``cappa`` checkpoints, COLIPRI with ``objectives.rrg.enabled``): each val / test
  volume's greedy report (the causal mode when it was trained, else the parallel one), its section
  headers removed, against the Findings as written.
- A ``report_generation`` checkpoint evaluates itself (its test / validation loop generates every
  report; ``ctvlp/commands/eval_tasks.py``).

Both write ``reports_<split>.csv`` (id, reference, generated) into the run (or ``--out``) and the
same results keys, ``<split>/reportgen/<metric>`` (lightning_modules/report_generation.py:
BLEU-1/4, ROUGE-L, METEOR, CRG, clinical precision / recall / F1 from the rule-based labeller, or
the classifier of ``evaluation.report_classifier``; ``clinical_labeller.txt`` says which).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import checkpoint_config
from ctvlp.results import results_table, write_results
from ctvlp.run_dir import Checkpoint
from datamodules.report_classifier import labeller_from_config, record_labeller
from lightning_modules.registry import module_class
from lightning_modules.report_generation import score_reports, write_reports_csv

log = logging.getLogger(__name__)

REPORT_TASK = "reportgen"
SELF_EVALUATING = "report_generation"
# A CapPa report line starts with its section header ("Lungs: ...", datamodules/cappa_targets.py).
_HEADER = re.compile(r"^\s*[A-Z][\w /&-]*:\s*")


def split_report_task(spec: str | None) -> tuple[bool, str | None]:
    """(whether ``reportgen`` was asked for, the other tasks of ``spec`` or None if none remain)."""
    if spec is None:
        return False, None
    names = [t.strip() for t in spec.split(",") if t.strip()]
    rest = [t for t in names if t != REPORT_TASK]
    return len(rest) < len(names), (",".join(rest) or None)


def cappa_report_text(sectioned: str) -> str:
    """A CapPa report as prose: section headers removed, empty sections dropped."""
    lines = [_HEADER.sub("", line).strip() for line in sectioned.splitlines()]
    return " ".join(line for line in lines if line)


def _generated(sample: dict[str, str]) -> str:
    modes = [key for key in sample if key != "reference"]
    causal = [key for key in modes if key.startswith("causal")]
    return sample[(causal or modes)[0]]


def evaluate_cappa_reports(
    checkpoint: Checkpoint,
    splits: list[str],
    overrides: list[str],
    out: Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, dict[str, float]]:
    """Greedy CapPa reports of every volume of ``splits``, scored; results merged into the run's."""
    cfg = checkpoint_config(checkpoint.config, overrides)
    module = checkpoint.restore(cfg)
    if getattr(module, "rrg_head", None) is None:
        raise ConfigError(
            f"{checkpoint.path}: a '{cfg.module}' checkpoint without a CapPa decoder generates no reports; "
            "--tasks reportgen needs a cappa checkpoint, COLIPRI with objectives.rrg.enabled, or a "
            "report_generation run"
        )
    target = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    module = module.to(target).eval()
    datamodule = module_class(str(cfg.module)).build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    run = out or checkpoint.run
    labeller = labeller_from_config(cfg)
    record_labeller(run, labeller)
    results: dict[str, float] = {}
    for split in splits:
        rows: list[dict[str, Any]] = []
        loader = datamodule.loader(split)
        for batch in tqdm(loader, desc=f"CapPa reports ({split})", disable=not progress):
            with torch.no_grad():
                samples = module.report_samples(batch)
            for image_id, reference, sample in zip(batch["image_id"], batch["report"], samples, strict=True):
                generated = cappa_report_text(_generated(sample))
                rows.append({"id": str(image_id), "reference": reference, "generated": generated})
        write_reports_csv(run / f"reports_{split}.csv", rows)
        scores = score_reports(
            [r["reference"] for r in rows],
            [r["generated"] for r in rows],
            int(cfg.evaluation.bootstrap_resamples),
            int(cfg.evaluation.bootstrap_seed),
            labeller,
        )
        results.update({f"{split}/{REPORT_TASK}/{name}": value for name, value in scores.items()})
    run.mkdir(parents=True, exist_ok=True)
    write_results(run / "results.json", results)
    merged = json.loads((run / "results.json").read_text(encoding="utf-8"))
    (run / "results.md").write_text(results_table(merged) + "\n", encoding="utf-8")
    return run, results
