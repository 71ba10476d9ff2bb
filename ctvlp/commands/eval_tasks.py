"""``ctvlp eval`` for checkpoints that evaluate themselves in their own validation and test loops:
task-conditioned ones (module ``uniferum``) and report generators (module ``report_generation``,
which write ``reports_<split>.csv`` and ``<split>/reportgen/*``; ctvlp/commands/eval_reportgen.py).

For Uniferum:

Scores every val / test volume on every task of the run's config: diagnosis (and prognosis) AUROC /
AUPRC per task and their means, organ Dice, and the held-out tasks (``uniferum.held_out_labels``,
never trained on). ``--task-text "LABEL=TEXT"`` (repeatable) evaluates a label with a new task text:
zero-shot on an unseen task when the label was held out in training (or has no task in the tables).
Results are merged into ``results.json`` / ``results.md`` of the run (or ``--out``).
``--transfer rad_chestct=PATH`` adds that dataset's test split, scored on its own labels
(``ctvlp/commands/eval_task_transfer.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ctvlp.commands.eval_task_transfer import evaluate_task_transfer
from ctvlp.commands.eval_transfer import Transfer
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import checkpoint_config
from ctvlp.results import collect_results, results_table, write_results
from ctvlp.run_dir import Checkpoint
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)

MODULES = ("uniferum", "report_generation")


def is_task_checkpoint(checkpoint: Checkpoint) -> bool:
    """Whether the checkpoint's module evaluates itself (``MODULES``)."""
    return checkpoint.config.get("module") in MODULES


def parse_task_texts(items: list[str] | None) -> dict[str, str]:
    texts: dict[str, str] = {}
    for item in items or []:
        label, sep, text = item.partition("=")
        if not sep or not label.strip() or not text.strip():
            raise ConfigError(f"--task-text {item!r} must look like LABEL=TEXT")
        texts[label.strip()] = text.strip()
    return texts


def task_eval_config(saved: dict, overrides: list[str], texts: dict[str, str]) -> DictConfig:
    cfg = checkpoint_config(saved, overrides)
    if texts:
        cfg.uniferum.task_texts = {**OmegaConf.to_container(cfg.uniferum.task_texts), **texts}
    return cfg


def evaluate_task_checkpoint(
    checkpoint: Checkpoint,
    splits: list[str],
    overrides: list[str],
    texts: dict[str, str],
    out: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    transfers: Sequence[Transfer] = (),
) -> tuple[Path, dict[str, float]]:
    cfg = task_eval_config(checkpoint.config, overrides, texts)
    module = checkpoint.restore(cfg)
    datamodule = module_class(cfg.module).build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    accelerator = "gpu" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    run = out or checkpoint.run
    run.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        default_root_dir=str(run),  # where a report generator writes its reports_<split>.csv
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    results: dict[str, float] = {}
    for split in splits:
        loader = datamodule.loader(split)
        if split == "test":
            trainer.test(module, dataloaders=loader, verbose=False)
        else:
            trainer.validate(module, dataloaders=loader, verbose=False)
        results.update(collect_results(trainer.callback_metrics))
    for transfer in transfers:
        results.update(evaluate_task_transfer(cfg, module, trainer, datamodule.tasks, transfer))
    write_results(run / "results.json", results)
    merged = json.loads((run / "results.json").read_text(encoding="utf-8"))
    (run / "results.md").write_text(results_table(merged) + "\n", encoding="utf-8")
    if texts:
        (run / "task_texts.json").write_text(json.dumps(texts, indent=1) + "\n", encoding="utf-8")
    return run, results


def run_task_eval(
    args: argparse.Namespace,
    checkpoint: Checkpoint,
    splits: list[str],
    overrides: list[str],
    transfers: Sequence[Transfer] = (),
) -> int:
    out, results = evaluate_task_checkpoint(
        checkpoint,
        splits,
        overrides,
        parse_task_texts(args.task_text),
        Path(args.out) if args.out else None,
        args.device,
        not args.no_progress,
        transfers,
    )
    print(f"\nResults ({out / 'results.json'}):\n")
    print(results_table(results))
    return 0
