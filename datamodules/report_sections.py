"""Findings → the eight CapPa report sections (COLIPRI Sec. 4.2, App. E.2).

COLIPRI structures every Findings report with an LLM into eight semantic sections before the
report-generation (CapPa) objective sees it. This module gives two ways to obtain that structure:

1. **Sidecar JSON** (the paper's LLM output, produced offline), read by
   :func:`load_structured_sections`. One key per volume (``VolumeName`` with or without
   ``.nii.gz``); each value maps section names to lists of sentences::

       {"train_12_a_1.nii.gz": {
           "Lungs and Airways": ["Trachea and both main bronchi are open.",
                                 "A 4 mm nodule in the right upper lobe."],
           "Pleura": ["No pleural effusion."],
           "Upper Abdomen": []
       }}

   Section names must be among :data:`SECTION_NAMES` (matched ignoring case, commas and repeated
   spaces, so the paper's "Tubes, Lines, and Devices" is accepted); missing sections are empty.
2. **A rule-based fallback**, :func:`assign_sections`, for reports without a sidecar entry: each
   sentence (``datamodules.text.split_sentences``) goes to the section of the *first* rule in
   :data:`SECTION_RULES` whose keyword pattern it matches, and to :data:`DEFAULT_SECTION` when
   none matches. It is a deterministic approximation of the LLM, not a replacement for it.

Both return ``{section: [sentence, ...]}`` with all eight sections, in canonical order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from datamodules.text import split_sentences

SECTION_NAMES: tuple[str, ...] = (
    "Image Quality",
    "Lungs and Airways",
    "Pleura",
    "Mediastinum and Hila",
    "Cardiovascular Structures",
    "Bones and Soft Tissues",
    "Tubes Lines and Devices",
    "Upper Abdomen",
)

# Sentences that match no rule are mostly generic parenchymal statements in chest CT
# ("No mass or infiltrative lesion was detected."), so they default to the lungs.
DEFAULT_SECTION = "Lungs and Airways"

# (section, pattern) in priority order: a sentence goes to the FIRST rule it matches.
# Why this order:
# - Devices first: a named device defines the sentence's topic ("catheter tip in the superior
#   vena cava", "coronary stent") even though it also names a vessel or organ.
# - Image quality next: "non-contrast ... mediastinal structures could not be evaluated" is about
#   the acquisition, not the mediastinum. ("examination" alone is not a keyword: CT-RATE uses it
#   for anatomy too, "upper abdominal organs included in the examination".)
# - Cardiovascular before pleura and mediastinum: "pericardial effusion" and "mediastinal main
#   vascular structures, heart contour" are cardiac statements.
# - Pleura before lungs: "pleural effusion with passive atelectasis of the adjacent lung".
#   "\bpleur" does not match "subpleural", which describes lung nodules.
# - Mediastinum before abdomen: "hiatal hernia ... part of the stomach".
# - Lungs before bones/soft tissues: "soft tissue density nodule in the right lung".
# Word boundaries keep short keywords from matching inside other words ("rib" in
# "distribution", "port" in "support").
SECTION_RULES: tuple[tuple[str, str], ...] = (
    (
        "Tubes Lines and Devices",
        r"catheter|pacemaker|\btubes?\b|\bports?\b|\bclips?\b|stent|\bwires?\b|prosthe|\bdrain",
    ),
    ("Image Quality", r"quality|artifact|artefact|contrast|\bmotion\b|suboptimal"),
    (
        "Cardiovascular Structures",
        r"heart|aort|coronary|pericard|cardi|\barter|\bvascular|vena cava|\bvalve",
    ),
    ("Pleura", r"\bpleur|effusion"),
    ("Mediastinum and Hila", r"mediastin|\bhil(?:ar|um|a)\b|lymph|esophag|oesophag|hiatal|thym"),
    (
        "Upper Abdomen",
        r"liver|hepat|spleen|splen|kidney|renal|adrenal|gallbladder|pancrea|abdom|stomach|gastric",
    ),
    (
        "Lungs and Airways",
        r"trache|bronch|lung|\blobes?\b|nodul|consolidation|emphysem|atelecta|opacit|parenchym"
        r"|pulmonary|ground.glass|infiltrat",
    ),
    (
        "Bones and Soft Tissues",
        r"\bbones?\b|osseous|vertebra|\bribs?\b|spin(?:e|al)|soft tissue|stern|scapul|clavic"
        r"|muscle|subcutaneous|breast|axill|fracture|lytic|sclerotic",
    ),
)

_COMPILED_RULES = tuple((section, re.compile(pattern, re.IGNORECASE)) for section, pattern in SECTION_RULES)


def _normalise_name(name: str) -> str:
    return " ".join(name.replace(",", " ").lower().split())


_CANONICAL_BY_NORMALISED = {_normalise_name(name): name for name in SECTION_NAMES}


def canonical_section_name(name: str) -> str:
    """The canonical spelling of ``name``; ``ValueError`` naming the valid sections otherwise."""
    canonical = _CANONICAL_BY_NORMALISED.get(_normalise_name(name))
    if canonical is None:
        raise ValueError(f"Unknown report section {name!r}; valid: {', '.join(SECTION_NAMES)}")
    return canonical


def empty_sections() -> dict[str, list[str]]:
    return {name: [] for name in SECTION_NAMES}


def section_of(sentence: str) -> str:
    """The section of one sentence: first matching rule of ``SECTION_RULES``, else the default."""
    for section, pattern in _COMPILED_RULES:
        if pattern.search(sentence):
            return section
    return DEFAULT_SECTION


def assign_sections(findings_text: str) -> dict[str, list[str]]:
    """Split Findings into sentences and put each into exactly one section (order kept)."""
    sections = empty_sections()
    for sentence in split_sentences(findings_text):
        sections[section_of(sentence)].append(sentence)
    return sections


def volume_key(volume_name: str) -> str:
    """Volume id without the NIfTI suffix (the key used by the sidecars)."""
    return volume_name.removesuffix(".nii.gz").removesuffix(".nii")


def _validate_entry(path: Path, name: str, entry: object) -> dict[str, list[str]]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{path}: entry '{name}' must map section names to sentence lists")
    sections = empty_sections()
    for section, sentences in entry.items():
        try:
            canonical = canonical_section_name(str(section))
        except ValueError as error:
            raise ValueError(f"{path}: entry '{name}': {error}") from None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{path}: entry '{name}', section '{section}' must be a list of strings")
        sections[canonical].extend(sentences)
    return sections


def load_structured_sections(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """Read the structured-Findings sidecar (schema in the module docstring).

    Returns ``{volume id without suffix: {section: [sentence, ...]}}`` with all eight canonical
    sections per volume. Raises ``ValueError`` on a malformed file or an unknown section name.
    """
    path = Path(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by VolumeName")
    return {volume_key(name): _validate_entry(path, name, entry) for name, entry in raw.items()}


def report_sections(
    volume_id: str,
    findings_text: str,
    structured: Mapping[str, dict[str, list[str]]] | None = None,
) -> dict[str, list[str]]:
    """The sidecar's sections for ``volume_id`` when present, else :func:`assign_sections`."""
    entry = (structured or {}).get(volume_key(volume_id))
    if entry is not None:
        return {name: list(entry.get(name, [])) for name in SECTION_NAMES}
    return assign_sections(findings_text)
