"""Prompts and output schemas of the three annotation tasks.

Every task asks the model for one JSON object and validates it against a fixed schema; a reply
that fails is retried and, after the last retry, listed for manual review with the reason.

- ``sections``: the eight CapPa sections of ``datamodules.report_sections`` (exactly those
  names as keys, each a list of sentences copied from the Findings). The copy is checked: every
  sentence must occur verbatim in the Findings (whitespace aside), and together they must hold
  the Findings' text exactly once (nothing dropped, nothing repeated).
- ``shorten``: ``{"positive": [...], "negative": [...]}``, one short sentence per finding.
- ``labels``: ``{"labels": {name: 1 | 0 | -1}}`` with exactly the source's K label names
  (1 present, 0 absent, -1 uncertain or not mentioned); a list of exactly K such values, in the
  order asked, is accepted too.

``PROMPT_VERSIONS`` names each prompt; a changed prompt gets a new version, so the progress log
redoes its reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from datamodules.report_sections import SECTION_NAMES

TASKS = ("sections", "shorten", "labels")
PROMPT_VERSIONS = {"sections": "sections-v1", "shorten": "shorten-v1", "labels": "labels-v1"}

_SYSTEM = (
    "You are a careful radiologist's assistant. You restructure radiology report text exactly as "
    "instructed. Answer with one JSON object and nothing else: no prose, no code fences."
)

_SECTIONS_PROMPT = """\
Sort every sentence of the Findings of this CT report into exactly one of these eight sections:
{sections}.
Every statement must appear once and only once. Copy each sentence verbatim; keep the original \
order within a section; do not add, merge, paraphrase, reinterpret or drop sentences. A section \
without sentences gets an empty list.
Answer with a JSON object whose keys are exactly the eight section names above and whose values \
are lists of sentences.

<findings>
{findings}
</findings>"""

_SHORTEN_PROMPT = """\
Make the Findings of this CT report as succinct as possible, as two lists of short sentences.
"negative": one short sentence for each statement of normal anatomy or absent disease, keeping its \
core message (e.g. "Esophagus is within normal limits." -> "Normal esophagus."; "No significant \
pathology was detected in the abdominal sections." -> "No abdominal pathologies."). No positive \
findings in this list.
"positive": one short sentence for each abnormal (pathological) finding, written as a statement, \
the way one would search for the case rather than describe it (e.g. "atypical infiltration areas of \
septal thickenings are observed in places" -> "Septal thickenings."). Normal statements are left out.
Keep laterality, location and size when given. Leave out comparisons with prior imaging and how \
the image was acquired.
Answer with a JSON object with exactly the keys "positive" and "negative", each a list of strings.

<findings>
{findings}
</findings>"""

_LABELS_PROMPT = """\
Read this CT report and classify each of the following {k} findings:
{labels}
Use 1 if the finding is present, 0 if it is absent or the report describes the region as normal, \
and -1 if it is uncertain or the report does not say.
Answer with a JSON object {{"labels": {{...}}}} that maps each of the {k} names above, spelled \
exactly as given, to 1, 0 or -1.

<report>
{report}
</report>"""


class ValidationError(ValueError):
    """A model reply that does not match its task's schema."""


@dataclass(frozen=True)
class Task:
    name: str
    label_names: tuple[str, ...] = ()

    @property
    def prompt_version(self) -> str:
        return PROMPT_VERSIONS[self.name]

    def messages(self, findings: str, impressions: str = "") -> list[dict[str, str]]:
        if self.name == "sections":
            user = _SECTIONS_PROMPT.format(sections="; ".join(SECTION_NAMES), findings=findings)
        elif self.name == "shorten":
            user = _SHORTEN_PROMPT.format(findings=findings)
        elif self.name == "labels":
            report = findings if not impressions else f"Findings: {findings}\nImpressions: {impressions}"
            user = _LABELS_PROMPT.format(
                k=len(self.label_names), labels="\n".join(f"- {n}" for n in self.label_names), report=report
            )
        else:
            raise ValueError(f"unknown task {self.name!r}; valid: {', '.join(TASKS)}")
        return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]

    def validate(self, reply: str, findings: str | None = None) -> dict:
        """The reply's JSON object, checked against the task's schema (and, for ``sections`` with
        ``findings`` given, against the Findings it must copy); ``ValidationError`` otherwise."""
        data = parse_json_object(reply)
        if self.name == "sections":
            sections = _validate_sections(data)
            if findings is not None:
                check_verbatim_copy(sections, findings)
            return sections
        if self.name == "shorten":
            return _validate_shorten(data)
        return _validate_labels(data, self.label_names)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json_object(reply: str) -> dict:
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationError(f"not JSON ({error.msg} at char {error.pos}): {reply[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
        raise ValidationError(f"{where} must be a list of non-empty strings")
    return [s.strip() for s in value]


def _validate_sections(data: dict) -> dict[str, list[str]]:
    if set(data) != set(SECTION_NAMES):
        missing = sorted(set(SECTION_NAMES) - set(data))
        extra = sorted(set(data) - set(SECTION_NAMES))
        raise ValidationError(
            f"section names must be exactly the eight; missing {missing}, unexpected {extra}"
        )
    return {name: _string_list(data[name], f"section {name!r}") for name in SECTION_NAMES}


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def check_verbatim_copy(sections: dict[str, list[str]], findings: str) -> None:
    """Every sentence occurs verbatim in ``findings``, and the sentences hold its text exactly
    once: their characters (blanks aside) add up to the Findings' own, so a dropped sentence falls
    short and a repeated one runs over. Sentence boundaries are the model's to choose."""
    text = _squeeze(findings)
    for name, sentences in sections.items():
        for sentence in sentences:
            if _squeeze(sentence) not in text:
                raise ValidationError(
                    f"section {name!r}: not copied verbatim from the Findings: {sentence[:80]!r}"
                )
    copied = sum(len(s.replace(" ", "")) for ss in sections.values() for s in map(_squeeze, ss))
    total = len(text.replace(" ", ""))
    if copied != total:
        what = "dropped" if copied < total else "repeated"
        raise ValidationError(
            f"sentences {what}: the sections hold {copied} of the Findings' {total} non-blank characters"
        )


def _validate_shorten(data: dict) -> dict[str, list[str]]:
    if set(data) != {"positive", "negative"}:
        raise ValidationError(f"keys must be exactly 'positive' and 'negative', got {sorted(data)}")
    return {key: _string_list(data[key], repr(key)) for key in ("positive", "negative")}


def _validate_labels(data: dict, names: tuple[str, ...]) -> dict[str, int]:
    labels = data.get("labels")
    if isinstance(labels, list):  # K values in the order asked
        if len(labels) != len(names):
            raise ValidationError(f"expected exactly {len(names)} labels, got a list of {len(labels)}")
        labels = dict(zip(names, labels, strict=True))
    if set(data) != {"labels"} or not isinstance(labels, dict):
        raise ValidationError('expected {"labels": {name: value}}')
    if set(labels) != set(names):
        missing = sorted(set(names) - set(labels))
        extra = sorted(set(labels) - set(names))
        raise ValidationError(f"expected exactly {len(names)} labels; missing {missing}, unexpected {extra}")
    bad = {n: v for n, v in labels.items() if type(v) is not int or v not in (1, 0, -1)}
    if bad:
        raise ValidationError(f"label values must be 1, 0 or -1; got {bad}")
    return {name: labels[name] for name in names}
