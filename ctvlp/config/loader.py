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
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, OmegaConfBaseException

from ctvlp.config.batch import plan_from_data
from ctvlp.config.errors import ConfigError, did_you_mean
from ctvlp.config.evaluation_tasks import CLASSIFICATION_TASKS, parse_tasks
from ctvlp.config.modules import MODULES, RENAMED_MODULES, current_module_name
from ctvlp.config.schema import CHOICES, RANDOM_INIT, ExperimentConfig

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
    # GreenRFM schedules its own stages (greenrfm.*) and has no warm-up
    if cfg.module != "greenrfm" and cfg.optim.warmup_steps >= cfg.trainer.max_steps:
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
    _check_cross_view(cfg)
    if cfg.model.text.frozen_cache_mb < 0 or cfg.data.text.shuffles_per_report < 0:
        raise ConfigError(
            f"model.text.frozen_cache_mb={cfg.model.text.frozen_cache_mb} and "
            f"data.text.shuffles_per_report={cfg.data.text.shuffles_per_report} must be >= 0 (0 = off)"
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
    _check_data_geometry(cfg)
    _check_image_model(cfg)
    if cfg.module == "greenrfm":
        _check_greenrfm(cfg)
    if cfg.module == "report_generation":
        _check_report_generation(cfg)
    if cfg.module == "segmentation":
        _check_segmentation(cfg)


def _check_cross_view(cfg: DictConfig) -> None:
    """RadFound's CC-MIM term: only crop pairs exist, and it rides on the MAE objective."""
    cross_view = cfg.objectives.mae.cross_view
    if not cross_view.enabled:
        return
    if cross_view.views != "crops":
        raise ConfigError(
            f"objectives.mae.cross_view.views={cross_view.views} is not supported yet: no source "
            "provides two reconstructions or two spacings of one scan. Use "
            "objectives.mae.cross_view.views=crops (two random crops of the same volume)"
        )
    if cfg.module not in ("mae", "colipri"):
        raise ConfigError(
            f"objectives.mae.cross_view.enabled=true with module {cfg.module}: only the MAE objective "
            "of module mae and module colipri (COLIPRI-CM/CRM) trains it"
        )
    if cfg.module == "colipri" and not cfg.objectives.mae.enabled:
        raise ConfigError(
            "objectives.mae.cross_view.enabled=true needs objectives.mae.enabled=true: the cross-view "
            "loss is computed on the MAE steps"
        )
    if not cross_view.temperature > 0 or int(cross_view.proj_dim) < 1:
        raise ConfigError(
            f"objectives.mae.cross_view: temperature ({cross_view.temperature}) must be > 0 and "
            f"proj_dim ({cross_view.proj_dim}) >= 1"
        )


def _check_uniferum_vision_weights(cfg: DictConfig) -> None:
    """Uniferum's EfficientNet-B0 starts from 2D ImageNet weights (Sec. 3, Tab. 1): a missing file
    stops a new experiment unless the random initialisation is chosen on purpose (a checkpoint's
    config is not checked: its weights are trained)."""
    weights = cfg.uniferum.vision_weights_2d
    if cfg.module != "uniferum" or cfg.uniferum.vision != "efficientnet_b0" or weights == RANDOM_INIT:
        return
    how = (
        "Uniferum inflates its 3D EfficientNet-B0 from timm's 2D ImageNet tf_efficientnet_b0. On a machine "
        "with internet: python -c \"import timm, torch; m = timm.create_model('tf_efficientnet_b0.in1k', "
        "pretrained=True); torch.save(m.state_dict(), 'tf_efficientnet_b0.pth')\" (or the model.safetensors "
        "of huggingface.co/timm/tf_efficientnet_b0.in1k), copy the file here and set "
        "uniferum.vision_weights_2d=/path/to/tf_efficientnet_b0.pth; or set "
        f"uniferum.vision_weights_2d={RANDOM_INIT} to train from a random initialisation on purpose"
    )
    if weights is None:
        raise ConfigError(f"uniferum.vision_weights_2d is not set. {how}")
    if not Path(str(weights)).expanduser().is_file():
        raise ConfigError(f"uniferum.vision_weights_2d={weights} does not exist. {how}")


def _check_report_generation(cfg: DictConfig) -> None:
    rg = cfg.reportgen
    if not rg.lm.name_or_path:
        raise ConfigError(
            "module report_generation needs reportgen.lm.name_or_path: a local Hugging Face causal LM "
            "directory (for CPU runs, `ctvlp tiny-lm --reports <ct-rate root> --out <dir>` builds one)"
        )
    if not rg.term_weight > 0 or rg.num_beams < 1 or rg.max_new_tokens < 1 or rg.lm.max_length < 2:
        raise ConfigError(
            f"reportgen: term_weight ({rg.term_weight}) must be > 0, num_beams ({rg.num_beams}) and "
            f"max_new_tokens ({rg.max_new_tokens}) >= 1, lm.max_length ({rg.lm.max_length}) >= 2"
        )


def _check_segmentation(cfg: DictConfig) -> None:
    """Segmentation reads one nnU-Net / MSD dataset, and its checkpoint and sampling settings make sense."""
    seg = cfg.segmentation
    if cfg.data.source != "msd" or len(cfg.data.sources):
        raise ConfigError(
            f"module segmentation reads one dataset in the nnU-Net raw / MSD layout: set data.source=msd "
            f"and data.root to it, and data.sources=[] (got data.source={cfg.data.source}, "
            f"{len(cfg.data.sources)} data.sources); `ctvlp phantom --source msd_liver --out DIR` writes one"
        )
    if seg.init_ckpt is not None and not Path(str(seg.init_ckpt)).expanduser().is_file():
        raise ConfigError(
            f"segmentation.init_ckpt={seg.init_ckpt} does not exist: give a checkpoint of ctvlp fit "
            "(runs/<experiment>/version_<k>/checkpoints/last.ckpt) or segmentation.init_ckpt=null for scratch"
        )
    if not 0 <= seg.foreground_oversample <= 1 or not 0 <= seg.sw_overlap < 1:
        raise ConfigError(
            f"segmentation: foreground_oversample ({seg.foreground_oversample}) must be in [0, 1] and "
            f"sw_overlap ({seg.sw_overlap}) in [0, 1)"
        )
    if seg.sw_batch_size < 1 or seg.log_images < 0:
        raise ConfigError(
            f"segmentation: sw_batch_size ({seg.sw_batch_size}) must be >= 1, log_images ({seg.log_images}) >= 0"
        )


def _check_image_model(cfg: DictConfig) -> None:
    """The image architecture fits the module, and a weights file exists (nothing is downloaded)."""
    image = cfg.model.image
    if (image.arch == "r3d_18") != (cfg.module == "greenrfm"):
        raise ConfigError(
            f"model.image.arch={image.arch} with module {cfg.module}: GreenRFM trains r3d_18 "
            "(model.image.arch=r3d_18), every other module a Primus (model.image.arch=primus)"
        )
    if image.stem not in (2, 4):
        raise ConfigError(f"model.image.stem={image.stem}: 2 (GreenRFM) or 4 (GreenRFM-Lite)")
    if image.weights is not None and not Path(str(image.weights)).expanduser().is_file():
        raise ConfigError(
            f"model.image.weights={image.weights} does not exist. Download torchvision's r3d_18 "
            "KINETICS400_V1 weights (r3d_18-b3b3357e.pth) on a machine with internet and point "
            "model.image.weights at the file, or set model.image.weights=null for a random initialisation"
        )


def _check_greenrfm(cfg: DictConfig) -> None:
    """The coarse segmentation term has its organ masks and whole cells."""
    g = cfg.greenrfm
    if float(g.seg_weight) <= 0:
        return
    if not cfg.data.organ_masks:
        raise ConfigError(
            f"greenrfm.seg_weight={g.seg_weight} needs the organ masks: set data.organ_masks=true "
            "(or greenrfm.seg_weight=0 to train without the segmentation term)"
        )
    sides = _voxels("data.crop_size", cfg.data.crop_size)
    if int(g.seg_cell) < 1 or any(side % int(g.seg_cell) for side in sides):
        raise ConfigError(
            f"greenrfm.seg_cell={g.seg_cell} must divide every side of "
            f"data.crop_size={_plain(cfg.data.crop_size)}: the segmentation target is one class mix "
            "per seg_cell^3 voxels"
        )


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, ListConfig | DictConfig) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_spacing(key: str, value: Any) -> bool:
    """A cache spacing: one positive number (isotropic) or 3 (x, y, z) in mm. Returns whether it is
    anisotropic."""
    value = _plain(value)
    values = [value] if _is_number(value) else value if isinstance(value, list) and len(value) == 3 else None
    if values is None or not all(_is_number(v) for v in values):
        raise ConfigError(
            f"{key}={value!r} must be a number (isotropic, mm) or a list of 3 numbers [x, y, z] in mm "
            f"(e.g. {key}=2 or '{key}=[1.5,1.5,3]')"
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{key}={value!r}: every spacing must be a positive number of mm")
    return len(set(values)) > 1


def _voxels(key: str, value: Any, allow_int: bool = True) -> tuple[int, int, int]:
    """A size in voxels: an int (a cube, where ``allow_int``) or a list of 3 ints [x, y, z], positive."""
    value = _plain(value)
    values = [value] * 3 if allow_int and isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, list)
        or len(values) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    ):
        kind = "an int (a cube) or a list of 3 ints [x, y, z]" if allow_int else "a list of 3 ints [x, y, z]"
        raise ConfigError(f"{key}={value!r} must be {kind} in voxels")
    if not all(v > 0 for v in values):
        raise ConfigError(f"{key}={value!r}: sizes must be positive")
    return (values[0], values[1], values[2])


def _check_data_geometry(cfg: DictConfig) -> None:
    """Spacing, crop size, crop field and HU window (datamodules/transforms.py, datamodules/cache.py)."""
    data = cfg.data
    spacings = {"data.spacing": data.spacing, "data.image_only_spacing": data.image_only_spacing}
    spacings.update({f"data.sources[{i}].spacing": item.spacing for i, item in enumerate(data.sources)})
    for key, value in spacings.items():
        if value is not None and _check_spacing(key, value) and cfg.module == "uniferum":
            raise ConfigError(
                f"{key}={_plain(value)}: Uniferum reads an isotropic cache; give one number "
                "(e.g. data.spacing=1.5)"
            )
    crop = _voxels("data.crop_size", data.crop_size)
    patch = int(cfg.model.image.patch_size)
    if any(c % patch for c in crop):
        raise ConfigError(
            f"data.crop_size={_plain(data.crop_size)} must be a multiple of model.image.patch_size={patch}"
            + (" on every axis" if len(set(crop)) > 1 else "")
        )
    if data.crop_field is not None:
        field = _voxels("data.crop_field", data.crop_field, allow_int=False)
        if any(c > f for c, f in zip(crop, field, strict=True)):
            raise ConfigError(
                f"data.crop_size={list(crop)} is larger than data.crop_field={list(field)} on some axis: "
                "the crop is drawn inside the field"
            )
    window = _plain(data.hu_window)
    if not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window):
        raise ConfigError(f"data.hu_window={window!r} must be two numbers [lo, hi] in HU, e.g. [-1000, 200]")
    lo, hi = window
    if not lo < hi:
        raise ConfigError(f"data.hu_window={window}: lo must be below hi")
    if lo < -1000 or hi > 1000:
        raise ConfigError(
            f"data.hu_window={window} reaches outside [-1000, 1000]: the cache stores HU clipped to "
            "[-1000, 1000], so no voxel lies beyond; choose a window inside it"
        )


def _not_set_message(keys: list[str]) -> str:
    hints = {
        "data.root": " (the CT-RATE 'dataset/' folder, e.g. data.root=/data/CT-RATE/dataset;"
        " or use PROFILE=cpu_demo for the bundled phantom)",
    }
    detail = "; ".join(f"'{k}'{hints.get(k, '')}" for k in keys)
    return f"Required config value(s) not set: {detail}"


def validate(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` merged into the typed schema, or raise :class:`ConfigError`."""
    _check_unknown_keys(cfg, _schema_keys(ExperimentConfig))
    try:
        typed = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid configuration: {error}") from error
    typed.module = current_module_name(str(typed.module))
    try:
        missing = sorted(OmegaConf.missing_keys(typed))
    except InterpolationToMissingValueError as error:
        # A key that interpolates a missing value (the image-only source's root: ${data.root})
        # fails inside missing_keys: the value it points at is the one to set.
        pointed = re.search(r"Missing mandatory value: (\S+)", str(error))
        raise ConfigError(_not_set_message([pointed.group(1) if pointed else str(error)])) from error
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
        raise ConfigError(_not_set_message(missing))
    _check_choices(typed)
    _check_consistency(typed)
    _one_device_batch(typed)
    return typed


def _one_device_batch(cfg: DictConfig) -> None:
    """``data.batch_size`` derived for one device where it is not given: what a single-process
    run uses. `ctvlp fit` derives it again for its devices (ctvlp/config/batch.py)."""
    if cfg.data.batch_size is None:
        accumulate = int(cfg.trainer.accumulate_grad_batches)
        cfg.data.batch_size = plan_from_data(cfg.data, accumulate).per_device


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
    _one_device_batch(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def _overlay_profile(cfg: DictConfig, overlay: DictConfig, path: Path) -> DictConfig:
    """The profile's keys over the experiment's, then its ``per_module.<module>`` section (what a
    profile changes for one module only, e.g. cpu_demo's GreenRFM steps) over those."""
    per_module = overlay.pop("per_module", None) or {}
    unknown = sorted(set(per_module) - set(MODULES))
    if unknown:
        raise ConfigError(f"{path}: per_module names {unknown}, which are not modules ({', '.join(MODULES)})")
    cfg = OmegaConf.merge(cfg, overlay)
    module = str(cfg.get("module", ""))
    module = RENAMED_MODULES.get(module, module)
    return OmegaConf.merge(cfg, per_module[module]) if module in per_module else cfg


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
        cfg = _overlay_profile(cfg, _load_composed(profile_path, root), profile_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, _dotlist(overrides, example="optim.lr=3e-4"))
    typed = validate(_pin_per_device_batch(cfg))
    _check_uniferum_vision_weights(typed)
    _warn_random_greenrfm_init(typed)
    return typed


def _warn_random_greenrfm_init(cfg: DictConfig) -> None:
    """GreenRFM starts from Kinetics-400 weights (Methods); a new experiment without the file
    trains from a random initialisation, with a warning (a checkpoint's config is not checked)."""
    if cfg.module == "greenrfm" and cfg.model.image.weights is None:
        log.warning(
            "GreenRFM's r3d_18 trains from a random initialisation (model.image.weights=null); the paper "
            "starts from torchvision's Kinetics-400 r3d_18 (r3d_18-b3b3357e.pth): download it on a machine "
            "with internet and set model.image.weights=/path/to/r3d_18-b3b3357e.pth"
        )


def _pin_per_device_batch(cfg: DictConfig) -> DictConfig:
    """A ``data.batch_size`` given explicitly fixes the per-device batch and replaces
    ``data.global_batch_size`` (ctvlp/config/batch.py), with a warning naming both."""
    per_device = OmegaConf.select(cfg, "data.batch_size")
    global_batch = OmegaConf.select(cfg, "data.global_batch_size")
    if per_device is None:
        return cfg
    if global_batch is not None:
        log.warning(
            "data.batch_size=%s given: it fixes the per-device batch and replaces data.global_batch_size=%s "
            "(the global batch becomes %s x devices x nodes x accumulation). Set data.global_batch_size "
            "instead to keep the recipe's batch on any device count",
            per_device,
            global_batch,
            per_device,
        )
    cfg.data.global_batch_size = None  # not the schema's default either
    return cfg
