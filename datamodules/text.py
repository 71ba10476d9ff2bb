"""Report text transforms: section choice, sentence shuffle, short-sentence replacement.

Shortened findings come from a sidecar JSON, one key per volume (``VolumeName`` with or
without ``.nii.gz``), in the format the COLIPRI paper produced offline with an LLM::

    {"train_12_a_1.nii.gz": {"positive": ["Right upper lobe nodule."],
                              "negative": ["No pleural effusion.", "Normal heart size."]}}

With probability ``shorten_p`` a training report is replaced by the concatenation of its
positive and negative short sentences (shuffled when sentence shuffle is on).

With ``shuffles_per_report`` K > 0 the sample's stream only picks one of K fixed seeds per report
(a hash of the volume id and the pick), and that seed draws the shortening and the sentence order:
a report then has at most K training texts, so a frozen text backbone's cache hits. The stream
stays a pure function of (seed, epoch, index).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

# A sentence ends at . ! or ? followed by white space; decimals such as "3.5 mm" are kept whole.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
SECTIONS = ("findings", "impressions", "both")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _strip_suffix(volume_name: str) -> str:
    return volume_name.removesuffix(".nii.gz").removesuffix(".nii")


def load_shortened_findings(path: Path) -> dict[str, dict[str, list[str]]]:
    """Read the shortened-findings sidecar, keyed by volume id (no file suffix)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by VolumeName")
    shortened: dict[str, dict[str, list[str]]] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not {"positive", "negative"} <= entry.keys():
            raise ValueError(f"{path}: entry '{name}' must have 'positive' and 'negative' lists")
        shortened[_strip_suffix(name)] = {
            "positive": list(entry["positive"]),
            "negative": list(entry["negative"]),
        }
    return shortened


def variant_rng(volume_id: str, variant: int) -> random.Random:
    """The fixed generator of one of a report's augmentation variants; ``hashlib``, not ``hash()``,
    whose value changes between processes."""
    digest = hashlib.blake2b(f"{volume_id}\0{variant}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


@dataclass
class ReportTransform:
    """Turns a record's report sections into the text the encoder sees."""

    section: str = "findings"
    sentence_shuffle: bool = False
    shorten_p: float = 0.0
    shortened: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    shuffles_per_report: int = 0  # 0: a fresh draw every time; K > 0: one of K fixed variants

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"section must be one of {SECTIONS}, got '{self.section}'")
        if self.shuffles_per_report < 0:
            raise ValueError(
                f"shuffles_per_report must be >= 0 (0 = unlimited), got {self.shuffles_per_report}"
            )

    def select(self, sections: dict[str, str]) -> str:
        findings = sections.get("findings", "") or ""
        impressions = sections.get("impressions", "") or ""
        if self.section == "findings":
            return findings
        if self.section == "impressions":
            return impressions
        if impressions == findings:  # one text in both sections (INSPECT's impression): said once
            return findings
        return f"{findings} {impressions}".strip()

    def __call__(self, volume_id: str, sections: dict[str, str], rng: random.Random | None) -> str:
        """``rng=None`` means evaluation: the selected section, unchanged."""
        text = self.select(sections)
        if rng is None:
            return text
        if self.shuffles_per_report > 0:
            rng = variant_rng(volume_id, rng.randrange(self.shuffles_per_report))
        short = self.shortened.get(volume_id)
        if short and self.shorten_p > 0 and rng.random() < self.shorten_p:
            sentences = short["positive"] + short["negative"]
        else:
            sentences = split_sentences(text)
        if self.sentence_shuffle:
            rng.shuffle(sentences)
        return " ".join(sentences)
