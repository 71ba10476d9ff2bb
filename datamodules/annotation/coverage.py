"""How many of a source's report volumes a text sidecar covers (the check ``ctvlp fit`` runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datamodules.annotation.inputs import SOURCES, read_items
from datamodules.report_sections import load_structured_sections, volume_key
from datamodules.text import load_shortened_findings

LOADERS: dict[str, Callable[[Path], dict]] = {
    "shorten": load_shortened_findings,
    "sections": load_structured_sections,
}


@dataclass(frozen=True)
class Coverage:
    sidecar: Path
    covered: int
    total: int

    @property
    def complete(self) -> bool:
        return self.covered == self.total


def sidecar_coverage(source: str, root: Path | str, sidecar: Path | str, task: str) -> Coverage | None:
    """Volumes with a report that have an entry in ``sidecar`` (``task``: shorten | sections);
    ``None`` for a source ``ctvlp annotate`` cannot read."""
    if source not in SOURCES:
        return None
    volumes = {volume_key(v) for item in read_items(source, root) for v in item.volumes}
    sidecar = Path(sidecar)
    entries = LOADERS[task](sidecar) if sidecar.exists() else {}
    return Coverage(sidecar, len(volumes & set(entries)), len(volumes))
