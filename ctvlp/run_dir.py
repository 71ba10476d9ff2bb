"""Run directories: ``runs/<experiment>/version_<k>/`` with config, logs, checkpoints, results."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from ctvlp.config.checkpoint_file import load_checkpoint_file
from ctvlp.config.errors import ConfigError
from lightning_modules.registry import module_class

if TYPE_CHECKING:
    from lightning_modules.base import ObjectiveModule

_VERSION = re.compile(r"^version_(\d+)$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def train_log(self) -> Path:
        """``ctvlp fit``'s log (progress lines, warnings) while training; a resume appends."""
        return self.path / "train.log"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def evaluation_checkpoint(self) -> Path:
        """The checkpoint that stands for this run in an evaluation: like fit's final evaluation,
        the best one (``best-step*.ckpt``) when the run's module selects its model on validation
        (Uniferum), else ``last.ckpt``."""
        module = OmegaConf.load(self.config).get("module") if self.config.is_file() else None
        if module is None or not module_class(str(module)).evaluate_best:
            return self.last_checkpoint
        best = sorted(self.checkpoints.glob("best-step*.ckpt"))
        if len(best) > 1:
            names = ", ".join(p.name for p in best)
            raise ConfigError(
                f"{self.checkpoints} holds several best checkpoints ({names}): pass one as --ckpt FILE"
            )
        if not best:
            log.warning("%s has no best checkpoint (no validation ran?); using last.ckpt", self.checkpoints)
            return self.last_checkpoint
        log.info(
            "Evaluating %s, the run's best by validation (pass a checkpoint file to choose another)", best[0]
        )
        return best[0]

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def results_table(self) -> Path:
        return self.path / "results.md"


def _versions(experiment_dir: Path) -> list[tuple[int, Path]]:
    if not experiment_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in experiment_dir.iterdir() if (m := _VERSION.match(p.name))]
    return sorted(found)


def new_run_dir(runs_dir: Path, experiment: str) -> RunDir:
    experiment_dir = runs_dir / experiment
    versions = _versions(experiment_dir)
    next_version = versions[-1][0] + 1 if versions else 0
    path = experiment_dir / f"version_{next_version}"
    path.mkdir(parents=True, exist_ok=False)
    return RunDir(path)


def resolve_resume(runs_dir: Path, experiment: str, resume: str) -> tuple[RunDir, Path]:
    """``resume="auto"``: the newest run of ``experiment`` that has a ``last.ckpt``.
    Otherwise ``resume`` is a checkpoint path or a run directory."""
    if resume == "auto":
        for _, path in reversed(_versions(runs_dir / experiment)):
            run = RunDir(path)
            if run.last_checkpoint.exists():
                return run, run.last_checkpoint
        raise FileNotFoundError(
            f"RESUME=auto found no run of '{experiment}' with checkpoints/last.ckpt under {runs_dir / experiment}"
        )
    target = Path(resume)
    if target.is_dir():
        run = RunDir(target)
        if not run.last_checkpoint.exists():
            raise FileNotFoundError(f"{run.last_checkpoint} does not exist; nothing to resume")
        return run, run.last_checkpoint
    if target.is_file():
        return RunDir(target.parent.parent), target
    raise FileNotFoundError(f"RESUME={resume}: no such checkpoint or run directory")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory's :meth:`RunDir.evaluation_checkpoint`; missing ->
    FileNotFoundError."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).evaluation_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt {path}: no such checkpoint file")
    return path


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file written by ``ctvlp fit``, read once: its saved config and raw contents."""

    path: Path
    config: dict[str, Any]
    raw: dict[str, Any]

    @property
    def run(self) -> Path:
        """The run directory it belongs to (``<run>/checkpoints/<file>``; else its folder)."""
        return self.path.parent.parent if self.path.parent.name == "checkpoints" else self.path.parent

    @property
    def global_step(self) -> int:
        return int(self.raw.get("global_step", 0))

    def restore(self, cfg: DictConfig) -> ObjectiveModule:
        """Its module (``cfg.module``, built from ``cfg``) with the saved weights."""
        module = module_class(str(cfg.module))(OmegaConf.to_container(cfg, resolve=True))
        module.load_state_dict(self.raw["state_dict"])
        return module


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint file written by ``ctvlp fit`` (once: it may hold gigabytes of state)."""
    raw = load_checkpoint_file(path)
    hyper_parameters = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    saved = hyper_parameters.get("config") if isinstance(hyper_parameters, dict) else None
    if saved is None:
        raise ConfigError(f"{path} holds no 'config' hyper-parameter: not a checkpoint written by ctvlp fit")
    return Checkpoint(Path(path), saved, raw)
