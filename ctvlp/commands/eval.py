"""``ctvlp eval``: retrieval, zero-shot and probe evaluation of a trained or imported encoder.

Checkpoints of every image-encoder objective are accepted: ``colipri`` (COLIPRI; all tasks)
and the image-only ``mae`` and ``cappa`` (no text embeddings: probes only, the default for them).
``uniferum`` and ``report_generation`` checkpoints evaluate themselves (``eval_tasks.py``);
``--tasks reportgen`` scores generated reports (``eval_reportgen.py``); ``--tasks dense_zeroshot``
scores MaskCLIP zero-shot segmentation maps of the findings (``eval_dense.py``); ``--transfer
NAME=PATH`` adds an external dataset's split, scored with this run's validation thresholds and
probe (``eval_transfer.py``).

Writes into the run directory (``--out``; default: the checkpoint's run directory):
``results.json`` (merged with training's flat keys), ``results.md`` (with CIs),
``results_per_label.json`` (per-label values, thresholds, excluded labels),
``probe_selection.json`` (every probe's validation AUPRC and the chosen one), TensorBoard
scalars under ``tensorboard/``, the log under ``eval.log`` and the feature cache under
``eval_features/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from ctvlp.commands.eval_dense import evaluate_dense, split_dense_task
from ctvlp.commands.eval_reportgen import (
    REPORT_TASK,
    SELF_EVALUATING,
    evaluate_cappa_reports,
    split_report_task,
)
from ctvlp.commands.eval_tasks import is_task_checkpoint, run_task_eval
from ctvlp.commands.eval_transfer import (
    Transfer,
    check_transfer_tasks,
    parse_transfers,
    refuse_transfer,
    transfer_split,
)
from ctvlp.config.errors import ConfigError
from ctvlp.config.evaluation_tasks import parse_tasks
from ctvlp.config.loader import checkpoint_config, load_experiment
from ctvlp.log_file import log_to_file
from ctvlp.results import results_table, write_results
from ctvlp.run_dir import Checkpoint, RunDir, new_run_dir, read_checkpoint, resolve_checkpoint
from datamodules.datamodule import CTDataModule, ensure_cache, resolve_cache_root
from datamodules.mixing import data_sources
from datamodules.sources.ct_rate import NonChestScans, non_chest_scans
from evaluation.features import checkpoint_identity, fingerprint
from evaluation.retrieval import RetrievalPairs, retrieval_pairs
from evaluation.runner import (
    EvalOutput,
    EvalSettings,
    EvalSplit,
    Evaluator,
    TrainSplit,
    hf_tokenize,
)
from lightning_modules.base import ObjectiveModule
from lightning_modules.colipri import ColipriModule
from lightning_modules.colipri_interop import ColipriFormatError, colipri_module_from_weights
from lightning_modules.nets.text_encoder import load_tokenizer

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")
FEATURES_DIR = "eval_features"
PER_LABEL_NAME = "results_per_label.json"
PROBE_SELECTION_NAME = "probe_selection.json"
EVAL_LOG_NAME = "eval.log"  # the evaluation's log lines, appended per run


def parse_splits(spec: str) -> list[str]:
    splits = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in splits if s not in EVAL_SPLITS]
    if unknown or not splits:
        raise ConfigError(f"Unknown evaluation split(s) {unknown or spec!r}; valid: {', '.join(EVAL_SPLITS)}")
    return [s for s in EVAL_SPLITS if s in splits]


def _overrides(args: argparse.Namespace) -> list[str]:
    return [*args.overrides, *([f"data.root={args.data}"] if args.data else [])]


def load_checkpoint(
    path: Path, overrides: list[str] | None = None
) -> tuple[DictConfig, ObjectiveModule, dict]:
    """The module of a ctvlp checkpoint of an image-encoder objective (``colipri``, ``mae``,
    ``cappa``), rebuilt with its own config (plus dot-list ``overrides``, validated) and weights.
    Returns (config, module, raw checkpoint)."""
    checkpoint = read_checkpoint(resolve_checkpoint(path))
    cfg, module = _restore(checkpoint, overrides or [])
    return cfg, module, checkpoint.raw


def _restore(checkpoint: Checkpoint, overrides: list[str]) -> tuple[DictConfig, ObjectiveModule]:
    cfg = checkpoint_config(checkpoint.config, overrides)
    module = checkpoint.restore(cfg)
    if not type(module).evaluation_tasks:
        raise ConfigError(
            f"{checkpoint.path}: a '{cfg.module}' checkpoint has no image encoder to evaluate here"
        )
    return cfg, module


def tasks_for(module: ObjectiveModule, module_name: str, spec: str | None) -> list[str]:
    """The tasks to run: ``spec`` (comma-separated), or by default every task the module supports
    (all for a vision-language model, probes for an image-only one)."""
    supported = type(module).evaluation_tasks
    if spec is None:
        if not module.embeds_text():
            log.info("The '%s' module has no text encoder: evaluating probes only", module_name)
        return list(supported)
    tasks = _parse_tasks(spec)
    unsupported = [t for t in tasks if t not in supported]
    if unsupported:
        raise ConfigError(
            f"The '{module_name}' module has no text encoder, so it cannot be evaluated by "
            f"{', '.join(unsupported)}: use --tasks probe"
        )
    return tasks


def _from_checkpoint(
    args: argparse.Namespace, checkpoint: Checkpoint
) -> tuple[DictConfig, ObjectiveModule, int, Path, dict]:
    cfg, module = _restore(checkpoint, _overrides(args))
    return cfg, module, checkpoint.global_step, checkpoint.run, checkpoint_identity(checkpoint.path)


def _from_colipri(args: argparse.Namespace) -> tuple[DictConfig, ColipriModule, int, Path | None, dict]:
    path = Path(args.colipri_weights)
    if not path.is_file():
        raise FileNotFoundError(f"--colipri-weights {path}: no such file")
    cfg = load_experiment(args.experiment, args.profile, _overrides(args))
    try:
        module = colipri_module_from_weights(cfg, path)
    except ColipriFormatError as error:
        raise ConfigError(str(error)) from error
    return cfg, module, 0, None, checkpoint_identity(path)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(cfg: DictConfig, device: torch.device) -> Callable[[], AbstractContextManager]:
    if device.type == "cuda" and str(cfg.trainer.precision).startswith("bf16"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def write_outputs(out: Path, output: EvalOutput, global_step: int) -> dict[str, float]:
    """results.json (merged), results.md, per-label and probe JSONs, TensorBoard scalars."""
    run = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(run.results, output.results)
    merged: dict[str, float] = json.loads(run.results.read_text(encoding="utf-8"))
    run.results_table.write_text(results_table(merged) + "\n", encoding="utf-8")
    per_label_path = out / PER_LABEL_NAME
    per_label = json.loads(per_label_path.read_text(encoding="utf-8")) if per_label_path.exists() else {}
    per_label.update(output.per_label)  # merged like results.json: tasks may be evaluated separately
    per_label_path.write_text(json.dumps(per_label, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if "probe" in output.details:
        (out / PROBE_SELECTION_NAME).write_text(
            json.dumps(output.details["probe"], indent=1) + "\n", encoding="utf-8"
        )
    writer = SummaryWriter(str(run.tensorboard))
    for key, value in output.results.items():
        writer.add_scalar(key, value, global_step)
    writer.close()
    return merged


def prepare_evaluation(
    cfg: DictConfig,
    module: ObjectiveModule,
    weights_identity: dict,
    tasks: list[str],
    out: Path,
    device: torch.device,
    progress: bool = True,
) -> tuple[CTDataModule, Evaluator]:
    """The data module (cache built if needed, splits set up) and an evaluator for ``module``.

    Features are cached under ``out/eval_features``, keyed by the weights' identity and the data
    config, so a second evaluation of the same weights reuses them.
    """
    ensure_cache(cfg.data, progress=progress)
    tokenizer = load_tokenizer(cfg.model.text.name_or_path)
    datamodule = CTDataModule(cfg.data, tokenizer, int(cfg.model.text.max_length), seed=int(cfg.seed))
    datamodule.setup("validate")
    settings = EvalSettings.from_config(cfg, tasks)
    settings.feature_cache_dir = out / FEATURES_DIR
    # The index file is rewritten whenever the cache is rebuilt (a changed report, label or label
    # table), so its identity keeps cached features from serving stale labels or reports.
    settings.model_key = fingerprint(
        weights_identity,
        checkpoint_identity(resolve_cache_root(cfg.data) / "index.json"),
        OmegaConf.to_container(cfg.data),
    )
    evaluator = Evaluator(
        module.to(device).eval(),
        hf_tokenize(tokenizer, int(cfg.model.text.max_length)),
        datamodule.label_names,
        settings,
        device=device,
        autocast=_autocast(cfg, device),
        progress=progress,
    )
    return datamodule, evaluator


def eval_split(datamodule: CTDataModule, name: str) -> EvalSplit:
    """A CT-RATE split of the data module: centre crops, every volume once; retrieval ranks the
    protocol's pairs (:func:`retrieval_set`)."""
    return EvalSplit(
        name,
        datamodule.loader(name),
        len(datamodule.datasets[name]),
        retrieval=retrieval_set(datamodule, name),
    )


def retrieval_set(datamodule: CTDataModule, name: str) -> RetrievalPairs:
    """COLIPRI's retrieval pairs of a split: its volumes minus CT-RATE's listed non-chest scans
    (``no_chest_*.txt`` in the primary source's root; App. C.1), one per distinct Findings (the
    authors' protocol)."""
    entries = datamodule.splits[name]
    primary = data_sources(datamodule.data)[0]
    non_chest = NonChestScans(frozenset(), 0)
    if primary.name == "ct_rate":
        non_chest = non_chest_scans(primary.root, [e.id for e in entries if e.source == "ct_rate"])
    return retrieval_pairs(
        [e.id for e in entries],
        [e.sections.get("findings") or "" for e in entries],
        non_chest.in_split,
        non_chest.before,
    )


def training_split(datamodule: CTDataModule, tasks: list[str]) -> TrainSplit:
    loader = datamodule.loader("train") if "probe" in tasks else None
    return TrainSplit.from_entries(datamodule.splits["train"], loader)


def evaluate_run(
    args: argparse.Namespace, checkpoint: Checkpoint | None, transfers: list[Transfer] | None = None
) -> tuple[Path, dict[str, float]]:
    """``args`` evaluated on ``checkpoint`` (a ctvlp checkpoint), or on ``--colipri-weights``;
    ``transfers`` (``--transfer``) add their datasets' splits."""
    splits = parse_splits(args.splits)
    transfers = transfers or []
    cfg, module, global_step, run_path, weights_identity = (
        _from_checkpoint(args, checkpoint) if checkpoint is not None else _from_colipri(args)
    )
    tasks = tasks_for(module, str(cfg.module), args.tasks)
    check_transfer_tasks(transfers, tasks)
    out = (
        Path(args.out)
        if args.out
        else run_path or new_run_dir(Path(cfg.runs_dir), f"{cfg.name}_colipri").path
    )
    progress = not args.no_progress
    with log_to_file(out / EVAL_LOG_NAME, info_loggers=("evaluation", __name__, transfer_split.__module__)):
        datamodule, evaluator = prepare_evaluation(
            cfg, module, weights_identity, tasks, out, _device(args.device), progress
        )
        external = [
            transfer_split(t, cfg.data, datamodule.label_names, int(cfg.seed), out / FEATURES_DIR, progress)
            for t in transfers
        ]
        start = time.perf_counter()
        output = evaluator.run(
            eval_split(datamodule, "val"),
            [*(eval_split(datamodule, s) for s in splits), *(t.split for t in external)],
            training_split(datamodule, tasks),
        )
        for split in external:
            split.add_outputs(output)
        log.info("Evaluation took %.1f s", time.perf_counter() - start)
    return out, write_outputs(out, output, global_step)


def _parse_tasks(spec: str) -> list[str]:
    try:
        return parse_tasks(spec)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def run_eval(args: argparse.Namespace) -> int:
    splits = parse_splits(args.splits)
    transfers = parse_transfers(args.transfer)  # names and roots checked before anything is loaded
    dense, args.tasks = split_dense_task(args.tasks)
    if args.tasks is not None:  # a typo fails before the checkpoint is loaded
        _parse_tasks(split_report_task(args.tasks)[1] or "retrieval")
    reports, other_tasks = split_report_task(args.tasks)
    if dense or reports:
        refuse_transfer(transfers, "--tasks " + ("dense_zeroshot" if dense else REPORT_TASK))
    checkpoint = None
    if dense and not args.ckpt:
        raise ConfigError("--tasks dense_zeroshot needs --ckpt of a COLIPRI-family run")
    if args.ckpt:  # read once; Uniferum and report generators evaluate themselves
        checkpoint = read_checkpoint(resolve_checkpoint(Path(args.ckpt)))
        if dense:
            out, results = evaluate_dense(
                checkpoint, splits, _overrides(args), Path(args.out) if args.out else None, args.device,
                args.write_maps, not args.no_progress,
            )  # fmt: skip
            print(f"\nResults ({out / 'results.json'}):\n")
            print(results_table(results))
            if args.tasks is None:
                return 0
        if is_task_checkpoint(checkpoint):
            if checkpoint.config.get("module") == SELF_EVALUATING:
                refuse_transfer(transfers, f"'{SELF_EVALUATING}' checkpoints")
                if other_tasks:
                    raise ConfigError(
                        f"A report_generation checkpoint is evaluated by --tasks {REPORT_TASK} only"
                    )
            return run_task_eval(args, checkpoint, splits, _overrides(args), transfers)
        if reports:
            out, results = evaluate_cappa_reports(
                checkpoint, splits, _overrides(args), Path(args.out) if args.out else None, args.device,
                not args.no_progress,
            )  # fmt: skip
            print(f"\nResults ({out / 'results.json'}):\n")
            print(results_table(results))
            if other_tasks is None:
                return 0
            args.tasks = other_tasks
    elif reports:
        raise ConfigError(f"--tasks {REPORT_TASK} needs --ckpt of a run that generates reports")
    elif args.task_text:
        raise ConfigError("--task-text needs --ckpt of a Uniferum (module uniferum) run")
    out, results = evaluate_run(args, checkpoint, transfers)
    print(f"\nResults ({out / 'results.json'}):\n")
    print(results_table(results))
    print(f"\nPer-label values: {out / PER_LABEL_NAME}\nTensorBoard logs: {out / 'tensorboard'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint or colipri weights: retrieval, zero-shot, probes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ckpt", default=None, help="a ctvlp checkpoint, or a run directory (its checkpoints/last.ckpt)"
    )
    source.add_argument("--colipri-weights", default=None, help="a colipri-format .safetensors file")
    parser.add_argument(
        "--experiment", default="colipri_c", help="with --colipri-weights: the experiment whose model matches"
    )
    parser.add_argument("--profile", default=None, help="with --colipri-weights: a profile overlay")
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated: retrieval, zeroshot (= zeroshot_native + zeroshot_short), "
        "zeroshot_native, zeroshot_short, zeroshot_prompts, probe, reportgen, dense_zeroshot (default: "
        "all that the checkpoint's module supports; probe for the image-only mae and cappa). reportgen: "
        "score the reports of a CapPa decoder (cappa, COLIPRI with RRG) or of a report_generation run. "
        "dense_zeroshot: MaskCLIP segmentation maps of the findings against the data's finding masks "
        "(COLIPRI family; the phantom writes the masks)",
    )
    parser.add_argument(
        "--write-maps",
        action="store_true",
        help="with --tasks dense_zeroshot: write each map and the crop's finding mask as NIfTI under "
        "<out>/dense_maps/<split>/",
    )
    parser.add_argument("--splits", default="val,test", help="comma-separated: val, test")
    parser.add_argument("--data", default=None, help="data root (sets data.root)")
    parser.add_argument(
        "--out", default=None, help="output directory (default: the checkpoint's run directory)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument(
        "--task-text",
        action="append",
        default=None,
        metavar="LABEL=TEXT",
        help="Uniferum (module uniferum) checkpoints: evaluate LABEL with this task text (repeatable); "
        "held-out labels report as <split>/heldout.<label>/auroc",
    )
    parser.add_argument(
        "--transfer",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="also evaluate an external dataset at PATH (repeatable; NAME: rad_chestct or, for "
        "uniferum runs only, inspect; their test splits) "
        "with this run's validation thresholds and probe, its labels mapped onto the run's; results "
        "under transfer_<NAME>/<task>/<metric>; zero-shot and probe tasks, or a uniferum run's "
        "tasks on the dataset's own labels (shared: diagnosis, unique: heldout)",
    )
    parser.add_argument("overrides", nargs="*", help="dot-list overrides, e.g. evaluation.probe_steps=2000")
    parser.set_defaults(handler=run_eval)
