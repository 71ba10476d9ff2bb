"""The stages of a compare, run in order with progress and an ETA, one encoder at a time: its
checkpoint (trained, imported, or a random baseline), then its evaluation, Uniferum's own
evaluation, report generation and segmentation fine-tuning on top of it. Each random baseline
follows the first encoder of its architecture, so a compare stopped half-way has complete rows
beside their baseline. Every job that finished before with the same fingerprint is reused
(:mod:`ctvlp.compare.jobs`), so a re-run only computes what is missing.

Layout of ``runs/compare/<spec>/`` (one folder per row)::

    <row>/train/<experiment>/version_*/     ctvlp fit of the encoder (rows with an experiment)
    <row>/checkpoints/last.ckpt             random baselines and imported COLIPRI weights
    <row>/eval/                             ctvlp eval: results.json, results_per_label.json
    <row>/uniferum/                         ctvlp eval of a Uniferum checkpoint (task-conditioned)
    <row>/reportgen/reportgen/version_*/    ctvlp fit of the shared report generator on this encoder
    <row>/segmentation/segmentation/version_*/   ctvlp fit of the shared segmentation fine-tuning
    <row>/*/job.json, job.log               each job's fingerprint, command, exit code and cost
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ctvlp.compare.encoder_checkpoints import (
    architecture,
    colipri_weights_checkpoint,
    encoder_costs,
    random_init_checkpoint,
)
from ctvlp.compare.jobs import Job, JobRecord, SlurmLauncher, fingerprint, run_local
from ctvlp.compare.spec import TRAINED_TASKS, CompareSpec, EncoderSpec
from ctvlp.config.evaluation_tasks import TASKS as EVAL_TASKS
from ctvlp.config.loader import checkpoint_config, load_experiment
from ctvlp.run_dir import RunDir
from evaluation.features import checkpoint_identity
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)

# Modules whose image encoder the report generator and the segmentation fine-tuning accept.
PRIMUS_ENCODER_MODULES = ("colipri", "mae", "cappa")
REPORT_ENCODER_MODULES = (*PRIMUS_ENCODER_MODULES, "greenrfm")
# Training overrides of every encoder trained by a compare: its evaluation is the compare's own.
TRAIN_OVERRIDES = ("evaluation.final_tasks=[]",)


@dataclass
class Row:
    """One encoder of the comparison and everything measured on it."""

    encoder: EncoderSpec
    config: DictConfig
    folder: Path
    checkpoint: Path | None = None
    train: JobRecord | None = None
    costs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)
    per_label: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def module(self) -> str:
        return str(self.config.module)


@dataclass
class Stage:
    """One unit of progress: a label, its kind (for the ETA) and the work."""

    label: str
    kind: str
    work: Callable[[], JobRecord | str | None]


class Progress:
    """``[k/N] label: ... done in 3.2 min; ETA 41 min`` to the terminal and the compare's log; the
    ETA averages the computed (not reused) stages of the same kind, else of any kind."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.durations: dict[str, list[float]] = {}
        self.remaining_kinds: list[str] = []

    def estimate(self, kind: str) -> float | None:
        same = self.durations.get(kind)
        pooled = [d for values in self.durations.values() for d in values]
        source = same or pooled
        return sum(source) / len(source) if source else None

    def eta_minutes(self) -> float | None:
        estimates = [self.estimate(kind) for kind in self.remaining_kinds]
        return None if any(e is None for e in estimates) else sum(estimates) / 60  # type: ignore[misc]

    def run(self, stages: list[Stage], after_each: Callable[[], None] | None = None) -> None:
        self.remaining_kinds = [s.kind for s in stages]
        for stage in stages:
            self.done += 1
            self.remaining_kinds.pop(0)
            prefix = f"[{self.done}/{self.total}] {stage.label}"
            log.info("%s: running", prefix)
            start = time.monotonic()
            record = stage.work()
            self._report(prefix, stage.kind, record, time.monotonic() - start)
            if after_each is not None:
                after_each()

    def _report(self, prefix: str, kind: str, record: JobRecord | str | None, seconds: float) -> None:
        if isinstance(record, str):  # submitted to SLURM, or still running there
            log.info("%s: %s", prefix, record)
            return
        reused = record is not None and record.reused
        if not reused:
            self.durations.setdefault(kind, []).append(seconds)
        eta = self.eta_minutes()
        state = "reused (finished earlier)" if reused else f"done in {seconds / 60:.1f} min"
        if record is not None and not record.ok:
            state = f"FAILED (exit {record.returncode}; see its job.log)"
        log.info("%s: %s; ETA %s", prefix, state, "unknown" if eta is None else f"{eta:.0f} min")


def _job(label: str, folder: Path, arguments: list[str], key: str, cfg: DictConfig | None = None) -> Job:
    """A job; a training asks SLURM for its config's devices and nodes, an evaluation for one GPU."""
    if cfg is None:
        return Job(label, folder, arguments, key)
    return Job(label, folder, arguments, key, cfg.trainer.devices, int(cfg.trainer.num_nodes))


def _newest_run(folder: Path) -> RunDir | None:
    versions = sorted(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    return RunDir(versions[-1]) if versions else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class Comparison:
    """Plans and runs the stages of ``spec`` in ``out``; the rows carry what was measured."""

    def __init__(self, spec: CompareSpec, out: Path, device: str = "auto") -> None:
        self.spec, self.out, self.device = spec, out, device
        self.launch = SlurmLauncher(spec.slurm) if spec.launcher == "slurm" else run_local
        self.rows = [self._row(encoder) for encoder in spec.encoders]
        # Architecture key -> its random baseline row.
        self.baseline_of: dict[str, Row] = {}
        if spec.baselines:
            self.rows += self._baselines()

    # ---------------------------------------------------------------------------- planning
    def _row(self, encoder: EncoderSpec) -> Row:
        folder = self.out / encoder.name
        if encoder.run:
            run = RunDir(Path(encoder.run))
            if not run.config.is_file():
                raise FileNotFoundError(
                    f"encoder '{encoder.name}': {run.config} does not exist (run: {encoder.run})"
                )
            config = checkpoint_config(
                OmegaConf.to_container(OmegaConf.load(run.config)), list(encoder.overrides)
            )
            return Row(encoder, config, folder, checkpoint=run.evaluation_checkpoint())
        overrides = [*self.spec.overrides, *encoder.overrides]
        return Row(encoder, load_experiment(str(encoder.experiment), self.spec.profile, overrides), folder)

    def _baselines(self) -> list[Row]:
        """One randomly initialised encoder per architecture among the rows; its config is that of
        the first row of the architecture that embeds text (so it takes every task), else the first."""
        groups: dict[str, list[Row]] = {}
        for row in self.rows:
            groups.setdefault(architecture(row.config)[0], []).append(row)
        baselines = []
        for members in groups.values():
            texts = [r for r in members if module_class(r.module).embeds_text()]
            model = (texts or members)[0]
            name = f"random_{model.config.name}"
            taken = {r.name for r in [*self.rows, *baselines]}
            name = next(
                n for n in (name, *(f"{name}_{k}" for k in range(2, len(taken) + 3))) if n not in taken
            )
            description = architecture(model.config)[1]
            encoder = EncoderSpec(name=name, experiment=model.encoder.experiment, baseline=True)
            log.info("Baseline %s: %s as initialised (seed %s), for %s", name, description, model.config.seed,
                     ", ".join(r.name for r in members))  # fmt: skip
            baselines.append(Row(encoder, model.config, self.out / name))
            self.baseline_of[architecture(model.config)[0]] = baselines[-1]
        return baselines

    def stage_order(self) -> list[Row]:
        """The rows in the order their stages run: the spec's encoders, each random baseline right
        after the first encoder of its architecture."""
        order: list[Row] = []
        for row in (r for r in self.rows if not r.encoder.baseline):
            order.append(row)
            baseline = self.baseline_of.get(architecture(row.config)[0])
            if baseline is not None and baseline not in order:
                order.append(baseline)
        return order

    def stages(self) -> list[Stage]:
        stages = []
        eval_tasks = [t for t in self.spec.tasks if t in EVAL_TASKS]
        for row in self.stage_order():
            # Trainings estimate their ETA from trainings only, not from instant checkpoints.
            instant = row.encoder.baseline or row.encoder.colipri_weights or row.checkpoint is not None
            kind = "checkpoint" if instant else "train"
            stages.append(Stage(f"{row.name}: checkpoint", kind, self._prepare(row)))
            if eval_tasks:
                stages.append(
                    Stage(f"{row.name}: eval {','.join(eval_tasks)}", "eval", self._evaluate(row, eval_tasks))
                )
            for task in (t for t in self.spec.tasks if t in TRAINED_TASKS):
                stages.append(Stage(f"{row.name}: {task}", task, self._trained_task(row, task)))
        return stages

    # ---------------------------------------------------------------------------- stages
    def _prepare(self, row: Row) -> Callable[[], JobRecord | str | None]:
        def work() -> JobRecord | str | None:
            if row.checkpoint is not None:  # an existing run
                row.costs = encoder_costs(row.checkpoint)
                return None
            if row.encoder.baseline:
                row.checkpoint = random_init_checkpoint(row.config, row.folder)
            elif row.encoder.colipri_weights:
                weights = Path(row.encoder.colipri_weights)
                row.checkpoint = colipri_weights_checkpoint(row.config, weights, row.folder)
            else:
                record = self._train(row)
                if isinstance(record, str):
                    row.missing["*"] = f"training {record}"
                    return record
                row.train = record
                run = _newest_run(row.folder / "train" / str(row.encoder.experiment))
                if not record.ok or run is None:
                    log_path = row.folder / "train" / "job.log"
                    row.missing["*"] = f"training failed (exit {record.returncode}; {log_path})"
                    return record
                row.checkpoint = run.evaluation_checkpoint()
            row.costs = encoder_costs(row.checkpoint)
            return row.train

        return work

    def _train(self, row: Row) -> JobRecord | str:
        """``ctvlp fit`` of the row's experiment; a training of the same config that failed or was
        cut off (a SLURM time limit) continues from its ``last.ckpt``."""
        experiment = str(row.encoder.experiment)
        overrides = [*self.spec.overrides, *row.encoder.overrides, *TRAIN_OVERRIDES]
        resolved = load_experiment(experiment, self.spec.profile, overrides)
        folder = row.folder / "train"
        arguments = [
            "fit",
            experiment,
            *self._profile(),
            *overrides,
            f"runs_dir={folder}",
            f"name={experiment}",
        ]
        key = fingerprint(OmegaConf.to_container(resolved))
        job = _job(f"{row.name}: train", folder, arguments, key, resolved)
        newest = _newest_run(folder / experiment)
        if job.finished() is None and job.attempted() and newest and newest.last_checkpoint.is_file():
            log.info("%s: continuing the interrupted training in %s", job.label, newest.path)
            job = _job(job.label, folder, [*arguments, "--resume", "auto"], key, resolved)
        return self.launch(job)

    def _profile(self) -> list[str]:
        return ["--profile", self.spec.profile] if self.spec.profile else []

    def _evaluate(self, row: Row, tasks: list[str]) -> Callable[[], JobRecord | str | None]:
        def work() -> JobRecord | str | None:
            if row.checkpoint is None:
                row.missing.update({task: row.missing.get("*", "no checkpoint") for task in tasks})
                return None
            offered = module_class(row.module).evaluation_tasks
            supported = [t for t in tasks if t in offered]
            reason = "no text encoder" if offered else f"{row.module} evaluates itself"
            row.missing.update({task: reason for task in tasks if task not in supported})
            if not supported:
                return None
            return self._ctvlp_eval(row, "eval", ["--tasks", ",".join(supported)], supported)

        return work

    def _ctvlp_eval(self, row: Row, folder_name: str, extra: list[str], tasks: list[str]) -> JobRecord | str:
        """``ctvlp eval`` of the row's checkpoint on the test split (selection on val), collected."""
        folder = row.folder / folder_name
        assert row.checkpoint is not None
        arguments = [
            "eval", "--ckpt", str(row.checkpoint), "--splits", "test", "--out", str(folder),
            "--device", self.device, "--no-progress", *extra, *self.spec.overrides,
        ]  # fmt: skip
        key = fingerprint(checkpoint_identity(row.checkpoint), extra, self.spec.overrides)
        job = _job(f"{row.name}: {folder_name}", folder, arguments, key)
        record = self.launch(job)
        self._collect(row, folder, job, record, tasks)
        return record

    def _trained_task(self, row: Row, task: str) -> Callable[[], JobRecord | str | None]:
        def work() -> JobRecord | str | None:
            if row.checkpoint is None:
                row.missing.setdefault(task, row.missing.get("*", "no checkpoint"))
                return None
            if task == "uniferum":
                if row.module != "uniferum":
                    row.missing[task] = "not a Uniferum encoder"
                    return None
                return self._ctvlp_eval(row, "uniferum", [], [task])
            accepted = REPORT_ENCODER_MODULES if task == "reportgen" else PRIMUS_ENCODER_MODULES
            if row.module not in accepted:
                row.missing[task] = (
                    f"a {row.module} encoder is not accepted (needs one of {', '.join(accepted)})"
                )
                return None
            return self._fit_on_encoder(row, task)

        return work

    def _fit_on_encoder(self, row: Row, task: str) -> JobRecord | str:
        """The shared report generator or segmentation fine-tuning, on this row's encoder."""
        assert row.checkpoint is not None
        stage = self.spec.reportgen if task == "reportgen" else self.spec.segmentation
        key_name = "reportgen.encoder_ckpt" if task == "reportgen" else "segmentation.init_ckpt"
        shared = list(self.spec.overrides) if task == "reportgen" else []  # segmentation has its own data
        overrides = [*shared, *stage.overrides, f"{key_name}={row.checkpoint}"]
        folder = row.folder / task
        resolved = load_experiment(stage.experiment, self.spec.profile, overrides)
        key = fingerprint(OmegaConf.to_container(resolved), checkpoint_identity(row.checkpoint))
        arguments = [
            "fit",
            stage.experiment,
            *self._profile(),
            *overrides,
            f"runs_dir={folder}",
            f"name={task}",
        ]
        job = _job(f"{row.name}: {task}", folder, arguments, key, resolved)
        record = self.launch(job)
        run = _newest_run(folder / task)
        self._collect(row, run.path if run else folder, job, record, [task])
        return record

    @staticmethod
    def _collect(row: Row, results: Path, job: Job, record: JobRecord | str, tasks: list[str]) -> None:
        """The results of a finished job into the row, or why its tasks have none."""
        if isinstance(record, str):
            row.missing.update({task: record for task in tasks})
            return
        if not record.ok:
            row.missing.update({task: f"failed (exit {record.returncode}; {job.log_path})" for task in tasks})
            return
        row.results.update(_read_json(results / "results.json"))
        row.per_label.update(_read_json(results / "results_per_label.json"))
        for task in tasks:
            row.costs[f"{task}_wall_s"] = record.wall_s

    def run(self, after_each: Callable[[], None] | None = None) -> list[Row]:
        """Run every stage (``after_each`` is called after each one, e.g. to rewrite the table)."""
        stages = self.stages()
        Progress(len(stages)).run(stages, after_each)
        for row in self.rows:
            for task in self.spec.tasks:
                value = row.results.get(self.spec.metric(task), math.nan)
                if isinstance(value, float) and math.isnan(value) and task not in row.missing:
                    row.missing[task] = f"{self.spec.metric(task)} not in the results"
        return self.rows
