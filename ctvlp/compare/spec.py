"""Compare specs (``experiments/compare/<name>.yaml``): the encoders, the shared data and the tasks
of one ``ctvlp compare``.

```yaml
profile: cpu_demo            # overlay of every job (--profile overrides it; none = the paper configs)
overrides: []                # dot-list overrides shared by every job: the data and its splits
encoders:                    # one row each
  - {name: colipri_c, experiment: colipri_c}               # trained here (reused by config hash)
  - {name: mine, run: runs/colipri_c/version_3}            # an existing run directory
  - {name: released, colipri_weights: colipri.safetensors, experiment: colipri_c}
  - {name: mae_short, experiment: mae, overrides: [trainer.max_steps=100]}
tasks: [retrieval, zeroshot, probe, uniferum, reportgen, segmentation]
baselines: true              # a randomly initialised encoder of each architecture (default true)
reportgen: {experiment: reportgen_llava, overrides: []}    # the one shared report generator
segmentation: {experiment: seg_finetune, overrides: []}    # the one shared fine-tuning protocol
headline: {}                 # task -> the metric of the table and the plots (defaults: HEADLINE)
launcher: local              # local | slurm (submitit: one SLURM job per job, see ctvlp.compare.jobs)
slurm: {}                    # submitit options (slurm_partition, timeout_min, ...)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ctvlp.config.errors import ConfigError, did_you_mean
from ctvlp.config.evaluation_tasks import TASKS as EVAL_TASKS
from ctvlp.config.evaluation_tasks import parse_tasks as parse_eval_tasks
from ctvlp.config.loader import experiments_dir

# Tasks scored by `ctvlp eval` on the encoder itself, then the tasks that train something on top.
TRAINED_TASKS = ("uniferum", "reportgen", "segmentation")
TASKS = (*EVAL_TASKS, *TRAINED_TASKS)
# The metric of each task in the table and the plots (test split; `_ci_low` / `_ci_high` beside
# it give the whiskers where the evaluation bootstraps them).
HEADLINE = {
    "retrieval": "test/retrieval/R@5",
    "zeroshot_native": "test/zeroshot_native/AUROC",
    "zeroshot_short": "test/zeroshot_short/AUROC",
    "zeroshot_prompts": "test/zeroshot_prompt_mean/AUROC",
    "probe": "test/probe/AUROC",
    "uniferum": "test/diagnosis/auroc_mean",
    "reportgen": "test/reportgen/clinical_F1_macro",
    "segmentation": "test/dice/mean",
}
# Lower is better for these metrics (the bold mark in the table picks the minimum).
LOWER_IS_BETTER = ("MnR", "loss")
SPEC_KEYS = (
    "profile", "overrides", "encoders", "tasks", "baselines", "reportgen", "segmentation", "headline", "launcher", "slurm",
)  # fmt: skip
LAUNCHERS = ("local", "slurm")
ENCODER_SOURCES = ("experiment", "run", "colipri_weights")
ENCODER_KEYS = ("name", *ENCODER_SOURCES, "overrides")
STAGE_KEYS = ("experiment", "overrides")
NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class EncoderSpec:
    """One row: an experiment to train, an existing run directory, or imported COLIPRI weights
    (with the experiment whose model they fit)."""

    name: str
    experiment: str | None = None
    run: str | None = None
    colipri_weights: str | None = None
    overrides: tuple[str, ...] = ()
    baseline: bool = False  # a randomly initialised encoder added by the compare itself

    @property
    def source(self) -> str:
        if self.baseline:
            return "random init"
        if self.run:
            return f"run {self.run}"
        if self.colipri_weights:
            return f"COLIPRI weights {self.colipri_weights}"
        return f"trained: {self.experiment}"


@dataclass(frozen=True)
class StageSpec:
    """The shared recipe of a task that trains on top of each encoder."""

    experiment: str
    overrides: tuple[str, ...] = ()


@dataclass
class CompareSpec:
    name: str
    encoders: list[EncoderSpec]
    tasks: list[str]
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    baselines: bool = True
    reportgen: StageSpec = StageSpec("reportgen_llava")
    segmentation: StageSpec = StageSpec("seg_finetune")
    headline: dict[str, str] = field(default_factory=dict)
    launcher: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)

    def metric(self, task: str) -> str:
        return self.headline.get(task, HEADLINE[task])


def resolve_spec_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix == ".yaml" and path.exists():
        return path
    folder = experiments_dir() / "compare"
    candidate = folder / f"{spec}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    raise ConfigError(
        f"Unknown compare spec '{spec}'.{did_you_mean(spec, known)} Available: {', '.join(known)}"
    )


def parse_tasks(names: list[str], where: str) -> list[str]:
    """Spec task names -> tasks in table order: ``ctvlp eval``'s tasks (and groups such as
    ``zeroshot``), then the tasks trained on top of each encoder."""
    evaluated = [n for n in names if n not in TRAINED_TASKS]
    try:
        chosen = set(parse_eval_tasks(evaluated)) if evaluated else set()
    except ValueError as error:
        raise ConfigError(f"{where}: {error}; trained on each encoder: {', '.join(TRAINED_TASKS)}") from error
    chosen.update(n for n in names if n in TRAINED_TASKS)
    if not chosen:
        raise ConfigError(f"{where}: 'tasks' is empty")
    return [t for t in TASKS if t in chosen]


def _encoder(raw: Any, where: str) -> EncoderSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each encoder is a mapping with 'name' and one of {ENCODER_SOURCES}")
    for key in raw:
        if key not in ENCODER_KEYS:
            raise ConfigError(f"{where}: unknown encoder key '{key}'.{did_you_mean(str(key), ENCODER_KEYS)}")
    name = str(raw.get("name", ""))
    if not NAME.match(name):
        raise ConfigError(f"{where}: encoder name {name!r} must be a non-empty [A-Za-z0-9_.+-] word")
    sources = [key for key in ("experiment", "run") if raw.get(key)]
    if raw.get("colipri_weights") and not raw.get("experiment"):
        raise ConfigError(f"{where}: encoder '{name}': colipri_weights needs the 'experiment' it fits")
    if raw.get("colipri_weights"):
        sources = ["colipri_weights"]
    if len(sources) != 1:
        raise ConfigError(f"{where}: encoder '{name}' needs exactly one of 'experiment' or 'run'")
    return EncoderSpec(
        name=name,
        experiment=raw.get("experiment"),
        run=raw.get("run"),
        colipri_weights=raw.get("colipri_weights"),
        overrides=tuple(str(o) for o in raw.get("overrides") or ()),
    )


def _stage(raw: Any, default: StageSpec, where: str) -> StageSpec:
    if raw is None:
        return default
    if not isinstance(raw, dict) or any(key not in STAGE_KEYS for key in raw):
        raise ConfigError(f"{where}: a mapping with keys {STAGE_KEYS}")
    return StageSpec(str(raw.get("experiment", default.experiment)), tuple(raw.get("overrides") or ()))


def _profile(name: str | None) -> str | None:
    """``none`` runs the experiments as written (the paper configs): no profile overlay."""
    return None if name in (None, "", "none") else str(name)


def load_spec(
    spec: str,
    profile: str | None = None,
    extra_overrides: list[str] | None = None,
    launcher: str | None = None,
) -> CompareSpec:
    path = resolve_spec_path(spec)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a compare spec is a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{path}: unknown compare key '{key}'.{did_you_mean(str(key), SPEC_KEYS)}")
    encoders = [_encoder(e, f"{path}: encoders[{i}]") for i, e in enumerate(raw.get("encoders") or [])]
    if not encoders:
        raise ConfigError(f"{path}: 'encoders' lists no encoder")
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: encoder names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    headline = {str(k): str(v) for k, v in (raw.get("headline") or {}).items()}
    for task in headline:
        if task not in TASKS:
            raise ConfigError(f"{path}: headline for unknown task '{task}'.{did_you_mean(task, TASKS)}")
    launcher = launcher or str(raw.get("launcher", "local"))
    if launcher not in LAUNCHERS:
        raise ConfigError(f"{path}: launcher must be one of {LAUNCHERS}, got '{launcher}'")
    return CompareSpec(
        name=path.stem,
        encoders=encoders,
        tasks=parse_tasks([str(t) for t in raw.get("tasks") or []], str(path)),
        profile=_profile(profile or raw.get("profile")),
        overrides=[*(raw.get("overrides") or []), *(extra_overrides or [])],
        baselines=bool(raw.get("baselines", True)),
        reportgen=_stage(raw.get("reportgen"), StageSpec("reportgen_llava"), f"{path}: reportgen"),
        segmentation=_stage(raw.get("segmentation"), StageSpec("seg_finetune"), f"{path}: segmentation"),
        headline=headline,
        launcher=launcher,
        slurm=dict(raw.get("slurm") or {}),
    )
