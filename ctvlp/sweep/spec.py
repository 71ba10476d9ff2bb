"""Sweep specs (``experiments/sweeps/<name>.yaml``) and their expansion into runs.

```yaml
base: colipri_c          # an experiment
profile: null            # optional profile overlay (the command line may override it)
mode: star               # star | grid | list
launcher: local          # local | slurm
overrides: []            # dot-list overrides shared by every run
params:                  # star / grid: dotted key -> values
  model.image.patch_size: [16, 8]
  data.batch_size,trainer.max_steps: [[8, 250000], [32, 31700]]   # keys that move together
runs: []                 # list mode: one mapping of dotted key -> value per run
metrics: [val/retrieval/R@5]
slurm: {}                # submitit options (nodes, timeout_min, slurm_partition, ...)
profile_params:          # per-profile replacements of params values (e.g. CPU-sized axes)
  cpu_demo: {data.crop_size: [32, 64]}
```

*Star* mode runs the base once and then varies one parameter at a time, skipping the value the
base already has (COLIPRI Tables 1-5). *Grid* runs the Cartesian product; *list* runs the
given combinations.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ctvlp.config.errors import ConfigError, did_you_mean
from ctvlp.config.loader import experiments_dir, load_experiment

MODES = ("star", "grid", "list")
LAUNCHERS = ("local", "slurm")
SPEC_KEYS = (
    "base",
    "profile",
    "mode",
    "launcher",
    "overrides",
    "params",
    "runs",
    "metrics",
    "slurm",
    "profile_params",
)


@dataclass
class SweepSpec:
    name: str
    base: str
    profile: str | None = None
    mode: str = "star"
    launcher: str = "local"
    overrides: list[str] = field(default_factory=list)
    params: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    profile_params: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: an id that names its directory and the overrides that define it."""

    run_id: str
    changes: dict[str, Any]

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={_format_value(value)}" for key, value in _flatten(self.changes).items()]


def _flatten(changes: dict[str, Any]) -> dict[str, Any]:
    """Split coupled keys (``"a,b": [va, vb]``) into one entry per key."""
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        keys = key.split(",")
        if len(keys) == 1:
            flat[key] = value
        elif not isinstance(value, list | tuple) or len(value) != len(keys):
            raise ConfigError(
                f"Sweep parameter '{key}' couples {len(keys)} keys; each value must be a list of {len(keys)}"
            )
        else:
            flat.update(zip(keys, value, strict=True))
    return flat


def _format_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _select(cfg: Any, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _run_id(changes: dict[str, Any]) -> str:
    if not changes:
        return "base"
    parts = [f"{key.rsplit('.', 1)[-1]}={_format_value(value)}" for key, value in changes.items()]
    return re.sub(r"[^A-Za-z0-9=.,_+-]", "_", "__".join(parts))


def resolve_spec_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix == ".yaml" and path.exists():
        return path
    candidate = experiments_dir() / "sweeps" / f"{spec}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in (experiments_dir() / "sweeps").glob("*.yaml"))
    raise ConfigError(f"Unknown sweep '{spec}'.{did_you_mean(spec, known)} Available: {', '.join(known)}")


def load_spec(spec: str, profile: str | None = None, extra_overrides: list[str] | None = None) -> SweepSpec:
    path = resolve_spec_path(spec)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep spec is a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{path}: unknown sweep key '{key}'.{did_you_mean(str(key), SPEC_KEYS)}")
    if "base" not in raw:
        raise ConfigError(f"{path}: 'base' (the experiment to sweep) is required")
    parsed = SweepSpec(name=path.stem, **raw)  # type: ignore[arg-type]
    if profile:
        parsed.profile = profile
    if parsed.profile in parsed.profile_params:
        parsed.params = {**parsed.params, **parsed.profile_params[parsed.profile]}
    parsed.overrides = [*parsed.overrides, *(extra_overrides or [])]
    if parsed.mode not in MODES:
        raise ConfigError(f"{path}: mode must be one of {MODES}, got '{parsed.mode}'")
    if parsed.launcher not in LAUNCHERS:
        raise ConfigError(f"{path}: launcher must be one of {LAUNCHERS}, got '{parsed.launcher}'")
    if parsed.mode == "list" and not parsed.runs:
        raise ConfigError(f"{path}: mode 'list' needs a non-empty 'runs' list")
    if parsed.mode != "list" and not parsed.params:
        raise ConfigError(f"{path}: mode '{parsed.mode}' needs 'params'")
    return parsed


def expand(spec: SweepSpec) -> list[SweepRun]:
    """The runs of a sweep, each validated against the schema before anything trains."""
    base_cfg = load_experiment(spec.base, spec.profile, spec.overrides)
    if spec.mode == "star":
        runs = [SweepRun("base", {})]
        for key, values in spec.params.items():
            base_values = [_select(base_cfg, k) for k in key.split(",")]
            base_value = base_values[0] if len(base_values) == 1 else base_values
            runs += [SweepRun(_run_id(_flatten({key: v})), {key: v}) for v in values if v != base_value]
    elif spec.mode == "grid":
        keys = list(spec.params)
        runs = [
            SweepRun(
                _run_id(_flatten(dict(zip(keys, combo, strict=True)))), dict(zip(keys, combo, strict=True))
            )
            for combo in itertools.product(*spec.params.values())
        ]
    else:
        runs = [SweepRun(_run_id(_flatten(dict(changes))), dict(changes)) for changes in spec.runs]
    ids = [run.run_id for run in runs]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ConfigError(f"Sweep '{spec.name}' defines the same run twice: {sorted(duplicates)}")
    for run in runs:  # fail fast on a typo in any run, not hours into the sweep
        load_experiment(spec.base, spec.profile, [*spec.overrides, *run.overrides])
    return runs
