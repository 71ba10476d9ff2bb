"""The methods an experiment can train (``module: <name>``) and the class that trains each.

Entries are import strings, so the config layer names them without importing anything heavy;
``lightning_modules.registry.module_class`` imports the chosen one. Each name is the method's
name everywhere: the module, its config section and its files.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MODULES: dict[str, str] = {
    "colipri": "lightning_modules.colipri:ColipriModule",
    "uniferum": "lightning_modules.uniferum:UniferumModule",
    "cappa": "lightning_modules.cappa:CapPaModule",
    "mae": "lightning_modules.mae:MAEModule",
    "greenrfm": "lightning_modules.greenrfm:GreenRFMModule",
    "report_generation": "lightning_modules.report_generation:ReportGenerationModule",
    "segmentation": "lightning_modules.segmentation:SegmentationModule",
}

# Names written by earlier versions of ctvlp (experiment YAMLs, checkpoints) -> today's name.
RENAMED_MODULES: dict[str, str] = {"contrastive": "colipri", "seg_conditioned": "uniferum"}


def current_module_name(name: str) -> str:
    """``name``, or today's name for a renamed module (with a warning saying what to write)."""
    if name in RENAMED_MODULES:
        new = RENAMED_MODULES[name]
        log.warning("module: %s is now called module: %s; loading it as %s", name, new, new)
        return new
    return name
