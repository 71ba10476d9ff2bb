"""``ctvlp fit``: train one experiment, then evaluate it and write results.json."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.evaluation import evaluate_splits
from ctvlp.config.errors import ConfigError
from ctvlp.config.evaluation_tasks import parse_tasks
from ctvlp.config.loader import load_experiment
from ctvlp.log_file import log_to_file
from ctvlp.model_selection import model_selection
from ctvlp.results import collect_results, results_table, write_results
from ctvlp.run_dir import RunDir, load_checkpoint_file, new_run_dir, resolve_resume
from ctvlp.trainer_factory import apply_batch_plan, build_trainer
from datamodules.annotation.coverage import sidecar_coverage
from datamodules.datamodule import SHORTENED_FINDINGS_FILE, STRUCTURED_FINDINGS_FILE, check_data
from datamodules.mixing import data_sources
from evaluation.runner import EvalSettings
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)


def flatten_config(cfg: DictConfig) -> dict[str, object]:
    """Dotted-key scalars of the config (lists as strings), as TensorBoard hparams need."""
    flat: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def best_checkpoint(trainer: L.Trainer, metric: str) -> str | None:
    """The best checkpoint by ``metric`` of this run, or ``None`` when none was written."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) == metric and getattr(callback, "best_model_path", ""):
            return str(callback.best_model_path)
    return None


@dataclass
class FitResult:
    run: RunDir
    results: dict[str, float]


def check_text_sidecars(cfg: DictConfig) -> None:
    """Stop before any compute when the experiment needs an LLM sidecar that misses volumes of the
    primary source, unless the config accepts the fallback (then log the coverage)."""
    text = cfg.data.text
    primary = data_sources(cfg.data)[0]
    needs = []
    if cfg.module == "colipri" and float(text.shorten_p) > 0:
        path = text.shortened_findings_json or Path(primary.root) / SHORTENED_FINDINGS_FILE
        needs.append(("shorten", path, "allow_missing_shortened", f"data.text.shorten_p={text.shorten_p}"))
    if cfg.module == "cappa" or (cfg.module == "colipri" and cfg.objectives.rrg.enabled):
        path = text.get("structured_findings_json") or Path(primary.root) / STRUCTURED_FINDINGS_FILE
        needs.append(("sections", path, "allow_keyword_sections", "report generation (CapPa sections)"))
    for task, path, opt_out, why in needs:
        coverage = sidecar_coverage(primary.name, primary.root, path, task)
        if coverage is None:
            continue
        counts = f"{coverage.sidecar} covers {coverage.covered} of {coverage.total} report volumes"
        if not coverage.complete and not text.get(opt_out):
            raise ConfigError(
                f"{why} needs the {task} sidecar, but {counts}. Write it with `ctvlp annotate --source "
                f"{primary.name} --root {primary.root} --tasks {task} --llm URL|DIR`, or set "
                f"data.text.{opt_out}=true to accept the fallback for the uncovered volumes."
            )
        log.info(
            "%s sidecar: %s%s", task, counts, "" if coverage.complete else f" (data.text.{opt_out}=true)"
        )


def fit(cfg: DictConfig, resume: str | None = None) -> FitResult:
    """Train ``cfg`` (already validated) in a new or resumed run directory."""
    L.seed_everything(int(cfg.seed), workers=True)
    # Fail on a wrong data root before any model is built. The cache is built in the
    # DataModule's prepare_data (one process per node), not here on every DDP rank.
    check_data(cfg.data)
    check_text_sidecars(cfg)
    if resume:
        run, ckpt_path = resolve_resume(Path(cfg.runs_dir), cfg.name, resume)
        load_checkpoint_file(ckpt_path, mmap=True)  # refuse a file that is not plain data, early
        log.info("Resuming %s from %s", run.path, ckpt_path)
    else:
        run, ckpt_path = new_run_dir(Path(cfg.runs_dir), cfg.name), None
    trainer = build_trainer(cfg, run)
    module_cls = module_class(cfg.module)
    # The batch per device follows from the global batch once the Trainer knows its devices; the
    # resolved values go into config.yaml and the module's hparams.
    plan = apply_batch_plan(cfg, trainer)
    if trainer.is_global_zero:
        log.info("Batch: %s", plan.describe())
    if plan.accumulate > 1 and module_cls.embeds_text():
        log.warning(
            "Gradient accumulation with a contrastive loss: each micro-batch contrasts %d pairs (gathered "
            "over %d device(s)), not the global batch of %d; the paper's batch is one contrastive batch",
            plan.per_device * plan.world,
            plan.world,
            plan.global_batch,
        )
    OmegaConf.save(cfg, run.config)

    datamodule = module_cls.build_datamodule(cfg)
    module = module_cls(OmegaConf.to_container(cfg, resolve=True))
    # weights_only: Lightning's own load of the resumed checkpoint unpickles no code either.
    with log_to_file(run.train_log if trainer.is_global_zero else None):
        trainer.fit(
            module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True
        )

    results: dict[str, float] = {}
    final_splits = [] if cfg.trainer.fast_dev_run else cfg.evaluation.final_splits
    # Objectives that select their model on validation (evaluate_best) are evaluated with the
    # best checkpoint's weights; the others with the final weights.
    weights = best_checkpoint(trainer, model_selection(cfg).metric) if module_cls.evaluate_best else None
    for split in final_splits:
        loader = datamodule.loader(split)
        if split == "test":
            trainer.test(module, dataloaders=loader, verbose=False, ckpt_path=weights)
        else:
            trainer.validate(module, dataloaders=loader, verbose=False, ckpt_path=weights)
        results.update(collect_results(trainer.callback_metrics))
    if final_splits and module_cls.embeds_text() and cfg.evaluation.final_tasks:
        results.update(_final_tasks(cfg, trainer, module, list(final_splits)))
    if trainer.is_global_zero and results:
        # The HParams tab pairs every run's config with its final metrics (sweeps compare here).
        trainer.logger.log_hyperparams(flatten_config(cfg), metrics=results)
    if trainer.is_global_zero:
        write_results(run.results, results)
        run.results_table.write_text(results_table(results) + "\n", encoding="utf-8")
    return FitResult(run, results)


def _final_tasks(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, splits: list[str]) -> dict:
    """``evaluation.final_tasks`` (zero-shot by default) on the final splits, on global rank 0."""
    if not trainer.is_global_zero:
        return {}
    tasks = parse_tasks(list(cfg.evaluation.final_tasks))  # validated with the config
    module.to(trainer.strategy.root_device)  # Lightning moves the module off the GPU after fit
    module.eval()
    with torch.no_grad():
        return evaluate_splits(trainer, module, EvalSettings.from_config(cfg, tasks), splits)


def run_fit(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.experiment, args.profile, args.overrides)
    result = fit(cfg, resume=args.resume)
    print(f"\nResults ({result.run.results}):\n")
    print(results_table(result.results))
    print(
        f"\nTensorBoard logs: {result.run.tensorboard}  (make tb, or tensorboard --logdir {result.run.path})"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fit", help="train an experiment (experiments/<NAME>.yaml)")
    parser.add_argument("experiment", help="experiment name (experiments/<NAME>.yaml) or a YAML path")
    parser.add_argument("--profile", default=None, help="overlay experiments/profiles/<PROFILE>.yaml")
    parser.add_argument(
        "--resume", default=None, help="'auto' (latest run of this experiment) or a checkpoint/run path"
    )
    parser.add_argument(
        "overrides", nargs="*", help="dot-list overrides, e.g. optim.lr=3e-4 data.root=/data/ct-rate"
    )
    parser.set_defaults(handler=run_fit)
