"""Experiment loading: ``defaults:`` composition, profile overlay, dot-list overrides, validation.

Resolution order (later wins): each entry of ``defaults:`` (recursively, in order), the
experiment's own keys, ``experiments/profiles/<profile>.yaml``, then command-line overrides.
The result is checked against :class:`ctvlp.config.schema.ExperimentConfig` before anything
heavy runs; an unknown key fails with the closest valid key named. :func:`checkpoint_config`
reads the config stored in a checkpoint, which may predate a key's removal.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ctvlp.config.errors import ConfigError, did_you_mean
from ctvlp.config.evaluation_tasks import CLASSIFICATION_TASKS, parse_tasks
from ctvlp.config.modules import current_module_name
from ctvlp.config.schema import CHOICES, ExperimentConfig

DEFAULTS_KEY = "defaults"

log = logging.getLogger(__name__)


def experiments_dir() -> Path:
    env = os.environ.get("CTVLP_EXPERIMENTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "experiments"


def available_experiments(root: Path | None = None) -> list[str]:
    root = root or experiments_dir()
    return sorted(p.stem for p in root.glob("*.yaml"))


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or experiments_dir()
    return sorted(p.stem for p in (root / "profiles").glob("*.yaml"))


def _resolve_file(ref: str, base: Path, kind: str, choices: list[str]) -> Path:
    candidate = Path(ref)
    if candidate.suffix == ".yaml" and candidate.exists():
        return candidate
    path = base / f"{ref}.yaml"
    if path.exists():
        return path
    raise ConfigError(
        f"Unknown {kind} '{ref}' (looked for {path}).{did_you_mean(ref, choices)} "
        f"Available: {', '.join(choices)}"
    )


def _load_composed(path: Path, root: Path, stack: tuple[Path, ...] = ()) -> DictConfig:
    if path in stack:
        chain = " -> ".join(p.stem for p in (*stack, path))
        raise ConfigError(f"Circular defaults: {chain}")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must contain a mapping at the top level")
    defaults = node.pop(DEFAULTS_KEY, [])
    if not isinstance(defaults, ListConfig | list):
        raise ConfigError(f"'{DEFAULTS_KEY}' in {path} must be a list of experiment parts")
    parts = [p.stem for p in root.rglob("*.yaml")]
    merged = OmegaConf.create()
    for ref in defaults:
        part = _resolve_file(str(ref), root, "defaults entry", sorted(set(parts)))
        merged = OmegaConf.merge(merged, _load_composed(part, root, (*stack, path)))
    return OmegaConf.merge(merged, node)


def _schema_keys(schema: Any, prefix: str = "") -> dict[str, Any]:
    """All dotted keys of a dataclass schema, mapped to their field type's dataclass (or None)."""
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        nested = type(default) if dataclasses.is_dataclass(default) else None
        keys[key] = nested
        if nested is not None:
            keys.update(_schema_keys(nested, key + "."))
    return keys


def _unknown_keys(
    cfg: DictConfig, schema_keys: dict[str, Any], prefix: str = ""
) -> Iterator[tuple[DictConfig, str, str]]:
    """(parent node, key, dotted key) of every key the schema does not have."""
    for key in list(cfg.keys()):
        dotted = f"{prefix}{key}"
        if dotted not in schema_keys:
            yield cfg, str(key), dotted
            continue
        value = cfg[key] if not OmegaConf.is_missing(cfg, key) else None
        if schema_keys[dotted] is not None and isinstance(value, DictConfig):
            yield from _unknown_keys(value, schema_keys, dotted + ".")


def _check_unknown_keys(cfg: DictConfig, schema_keys: dict[str, Any]) -> None:
    for _, _, dotted in _unknown_keys(cfg, schema_keys):
        parent = dotted.rpartition(".")[0]
        pool = [k for k in schema_keys if k.rpartition(".")[0] == parent]
        suggestion = did_you_mean(dotted, pool, cutoff=0.5) or did_you_mean(dotted, list(schema_keys))
        raise ConfigError(f"Unknown config key '{dotted}'.{suggestion}")


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"Invalid value '{value}' for '{key}'.{did_you_mean(str(value), allowed)} "
                f"Allowed: {', '.join(allowed)}"
            )


def _check_consistency(cfg: DictConfig) -> None:
    """Cross-key rules a schema cannot express."""
    if cfg.optim.warmup_steps >= cfg.trainer.max_steps:
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps} must be smaller than "
            f"trainer.max_steps={cfg.trainer.max_steps}"
        )
    for key in ("callback_tasks", "final_tasks"):
        tasks = list(cfg.evaluation[key])
        try:
            if tasks or key == "callback_tasks":
                parse_tasks(tasks)
        except ValueError as error:
            raise ConfigError(f"evaluation.{key}: {error}") from error
    if not cfg.objectives.mae.decoder_lr_factor > 0:
        raise ConfigError(
            f"objectives.mae.decoder_lr_factor={cfg.objectives.mae.decoder_lr_factor} must be positive "
            "(1 = the decoder trains at the encoder's lr)"
        )
    best_metric = cfg.trainer.best_metric
    if best_metric is not None and not str(best_metric).startswith("val/"):
        raise ConfigError(
            f"trainer.best_metric='{best_metric}' must be a validation metric ('val/...'): model "
            "selection on another split would leak it (e.g. trainer.best_metric=val/retrieval/MnR)"
        )
    metric_task = str(best_metric).split("/")[1] if best_metric and "/" in str(best_metric) else None
    if metric_task in CLASSIFICATION_TASKS:
        raise ConfigError(
            f"trainer.best_metric='{best_metric}' comes from the periodic evaluation, which does not "
            "pick checkpoints: choose a metric the validation loop logs (val/retrieval/*, val/rrg/loss, "
            "val/mae/loss, val/diagnosis/*, val/seg/*)"
        )
    if best_metric is None and cfg.trainer.best_mode is not None:
        raise ConfigError(
            f"trainer.best_mode={cfg.trainer.best_mode} needs trainer.best_metric: the module's own "
            "metric comes with its own mode"
        )
    if cfg.data.crop_size % cfg.model.image.patch_size:
        raise ConfigError(
            f"data.crop_size={cfg.data.crop_size} must be a multiple of "
            f"model.image.patch_size={cfg.model.image.patch_size}"
        )


def validate(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` merged into the typed schema, or raise :class:`ConfigError`."""
    _check_unknown_keys(cfg, _schema_keys(ExperimentConfig))
    try:
        typed = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid configuration: {error}") from error
    typed.module = current_module_name(str(typed.module))
    missing = sorted(OmegaConf.missing_keys(typed))
    if typed.data.sources:  # a source list replaces the data.source / data.root shorthand
        missing = [k for k in missing if k != "data.root"]
        for item in typed.data.sources:
            if item.name not in CHOICES["data.source"]:
                raise ConfigError(
                    f"Invalid source '{item.name}' in data.sources."
                    f"{did_you_mean(str(item.name), CHOICES['data.source'])} "
                    f"Allowed: {', '.join(CHOICES['data.source'])}"
                )
    if missing:
        hints = {
            "data.root": " (the CT-RATE 'dataset/' folder, e.g. data.root=/data/CT-RATE/dataset;"
            " or use PROFILE=cpu_demo for the bundled phantom)",
        }
        detail = "; ".join(f"'{k}'{hints.get(k, '')}" for k in missing)
        raise ConfigError(f"Required config value(s) not set: {detail}")
    _check_choices(typed)
    _check_consistency(typed)
    return typed


def _dotlist(overrides: Sequence[str], example: str) -> DictConfig:
    """Command-line ``key=value`` overrides as a config; anything else is a ConfigError."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like key=value (e.g. {example})")
    return OmegaConf.from_dotlist(list(overrides))


def checkpoint_config(saved: dict[str, Any], overrides: Sequence[str] = ()) -> DictConfig:
    """The config a checkpoint was trained with, plus dot-list ``overrides``, validated.

    Keys this version's schema no longer has (a checkpoint written by an older ctvlp) are dropped
    with a warning that names them; keys added since take their defaults. The overrides are
    checked strictly, like any command line.
    """
    override_cfg = _dotlist(overrides, example="evaluation.probe_steps=500")
    cfg = OmegaConf.create(saved)
    stale = list(_unknown_keys(cfg, _schema_keys(ExperimentConfig)))
    for parent, key, _ in stale:
        del parent[key]
    if stale:
        log.warning(
            "The checkpoint's config has keys this ctvlp no longer knows, ignored: %s",
            ", ".join(dotted for _, _, dotted in stale),
        )
    return validate(OmegaConf.merge(cfg, override_cfg))


def config_from_sections(sections: dict[str, Any]) -> dict[str, Any]:
    """The schema's defaults with ``sections`` (plain nested dicts) merged over them, checked for
    unknown keys, types and choices, as the plain dict a module takes: a module built in a few
    lines, with no experiment file. Required paths left unset (``data.root``) stay ``"???"``."""
    _check_unknown_keys(OmegaConf.create(sections), _schema_keys(ExperimentConfig))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), sections)
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid configuration: {error}") from error
    cfg.module = current_module_name(str(cfg.module))
    _check_choices(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def load_experiment(
    experiment: str,
    profile: str | None = None,
    overrides: list[str] | None = None,
    root: Path | None = None,
) -> DictConfig:
    """Compose, overlay, override and validate one experiment config."""
    root = root or experiments_dir()
    path = _resolve_file(experiment, root, "experiment", available_experiments(root))
    cfg = _load_composed(path, root)
    if "name" not in cfg:
        cfg.name = path.stem
    if profile:
        profile_path = _resolve_file(profile, root / "profiles", "profile", available_profiles(root))
        cfg = OmegaConf.merge(cfg, _load_composed(profile_path, root))
    if overrides:
        cfg = OmegaConf.merge(cfg, _dotlist(overrides, example="optim.lr=3e-4"))
    return validate(cfg)
