"""Which LightningModule an experiment trains: ``module: <name>`` in its YAML.

Entries are import strings so that choosing one objective never imports the others' heavy
dependencies. Each module class builds its own DataModule (``ObjectiveModule.build_datamodule``),
so ``ctvlp fit`` stays the same for every objective.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config schema imports MODULES; keep that import light
    from lightning_modules.base import ObjectiveModule

MODULES: dict[str, str] = {
    "contrastive": "lightning_modules.contrastive:ContrastiveModule",
    "seg_conditioned": "lightning_modules.seg_conditioned:SegConditionedModule",
    "cappa": "lightning_modules.cappa:CapPaModule",
    "mae": "lightning_modules.mae:MAEModule",
}


def module_class(name: str) -> type[ObjectiveModule]:
    """The ``ObjectiveModule`` subclass registered as ``name``."""
    if name not in MODULES:
        raise ValueError(f"Unknown module {name!r}; registered: {', '.join(sorted(MODULES))}")
    module_path, class_name = MODULES[name].split(":")
    return getattr(importlib.import_module(module_path), class_name)
