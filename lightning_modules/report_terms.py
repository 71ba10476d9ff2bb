"""Medical terms of RadFM's term-weighted loss (``reportgen.term_weight``, ``reportgen.vocabulary``).

RadFM weights the loss of report tokens that spell a medical term (UMLS) above the others. Our
default vocabulary is CT-specific and offline: the 18 CT-RATE label names, every phrasing the
report labeller knows for them (``datamodules.report_labeller.VOCABULARY``) and the chest and
abdominal anatomy below. A user may pass a file instead (``reportgen.vocabulary``: one term per
line, ``#`` comments; e.g. a UMLS-derived list), matched case-insensitively at word boundaries.

A token is a term token when its characters overlap a match, so ``"consolidation"`` split into
``consol`` + ``idation`` weights both pieces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datamodules.labels import CT_RATE_LABELS
from datamodules.report_labeller import VOCABULARY

ANATOMY = (
    "lung", "lungs", "lobe", "lobes", "upper lobe", "middle lobe", "lower lobe", "lingula", "apex", "apical",
    "basal", "hilum", "hilar", "mediastinum", "mediastinal", "trachea", "bronchus", "bronchi", "bronchial",
    "pleura", "pleural", "pericardium", "pericardial", "heart", "cardiac", "aorta", "aortic",
    "pulmonary artery", "vena cava", "esophagus", "thyroid", "thorax", "thoracic", "chest wall", "rib",
    "ribs", "vertebra", "vertebrae", "vertebral", "spine", "sternum", "diaphragm", "axilla", "axillary",
    "liver", "hepatic", "gallbladder", "spleen", "pancreas", "kidney", "kidneys", "renal", "adrenal",
    "parenchyma", "subpleural", "segment", "segmental",
)  # fmt: skip


def default_term_patterns() -> list[str]:
    """Regular expressions of the default CT vocabulary."""
    patterns = [re.escape(name.lower()) for name in CT_RATE_LABELS]
    patterns += [rf"\b{re.escape(term)}\b" for term in ANATOMY]
    for vocabulary in VOCABULARY.values():
        patterns += vocabulary.patterns
    return patterns


def read_term_file(path: str | Path) -> list[str]:
    """The terms of a vocabulary file as regular expressions (one literal term per line)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"reportgen.vocabulary={path}: no such file (one medical term per line)")
    terms = [line.split("#", 1)[0].strip() for line in file.read_text(encoding="utf-8").splitlines()]
    patterns = [rf"\b{re.escape(term.lower())}\b" for term in terms if term]
    if not patterns:
        raise ValueError(f"reportgen.vocabulary={path} lists no terms")
    return patterns


class TermMatcher:
    """Finds medical-term character spans in a report."""

    def __init__(self, patterns: Sequence[str]) -> None:
        # Longest alternatives first, so "pleural effusion" wins over "pleural".
        ordered = sorted(set(patterns), key=len, reverse=True)
        self.regex = re.compile("|".join(f"(?:{p})" for p in ordered))

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self.regex.finditer(text.lower()) if m.end() > m.start()]

    def token_mask(self, text: str, offsets: Sequence[tuple[int, int]]) -> list[bool]:
        """Per token (its character ``offsets`` in ``text``): whether it overlaps a term."""
        spans = self.spans(text)
        return [any(start < e and s < end for s, e in spans) for start, end in offsets]
