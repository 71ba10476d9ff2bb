"""The LightningModule class of an experiment's ``module: <name>`` (names: ``ctvlp.config.modules``).

Only the chosen module is imported, so choosing one objective never imports the others' heavy
dependencies. Each module class builds its own DataModule (``ObjectiveModule.build_datamodule``),
so ``ctvlp fit`` stays the same for every objective.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ctvlp.config.errors import ConfigError, did_you_mean
from ctvlp.config.modules import MODULES, current_module_name

if TYPE_CHECKING:
    from lightning_modules.base import ObjectiveModule


def module_class(name: str) -> type[ObjectiveModule]:
    """The ``ObjectiveModule`` subclass registered as ``name`` (a former name is accepted)."""
    name = current_module_name(name)
    if name not in MODULES:
        raise ConfigError(
            f"Unknown module {name!r}.{did_you_mean(name, list(MODULES))} Registered: {', '.join(sorted(MODULES))}"
        )
    module_path, class_name = MODULES[name].split(":")
    return getattr(importlib.import_module(module_path), class_name)
