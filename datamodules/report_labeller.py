"""Rule-based, negation- and uncertainty-aware labeller: CT report text -> the 18 CT-RATE labels.

How a report is read
--------------------
1. The text is split into clauses: at sentence ends (``.``, ``!``, ``?``, line breaks, also a full
   stop glued to the next capital as in ``observed.No``) and at ``;`` and the contrastive words
   ``but``, ``however``, ``whereas``, ``although``. Clauses are lower-cased.
2. Each label has a vocabulary (:data:`VOCABULARY`): regular expressions for its phrasings, phrases
   masked out before matching (so that ``pericardial effusion`` is not a pleural one, ``aortic valve``
   calcification is not arterial wall calcification), and *pairs*: a finding cue near a site cue
   in the same clause (``calcific plaques ... in the aortic arch``), for findings radiologists
   write with the site apart from the finding word.
3. Every mention is classed as negated, uncertain or positive from cues in its clause
   (:data:`NEGATION_BEFORE` / :data:`NEGATION_AFTER`, :data:`UNCERTAINTY_BEFORE` /
   :data:`UNCERTAINTY_AFTER`). A cue before a mention reaches forward to the end of the clause, but
   stops at a comma, ``and`` or ``with`` once a verb (``is``, ``observed``, ...) stood between:
   ``No effusion is seen, atelectasis in the left lower lobe`` negates only the effusion, while
   ``No lymph node in pathological size and appearance was detected`` negates the lymph node. A cue
   after a mention (``... is not observed``, ``... cannot be excluded``) reaches back the same way,
   at most 80 characters. A cue inside a mention applies to it (``heart size is not increased``,
   ``lymph nodes not reaching pathological size``). Hedges are found first and masked, so
   ``cannot be excluded`` / ``can not be ruled out`` are uncertain, not negated. When both a hedge
   and a negation reach a mention the nearer decides: ``No consolidation, possibly atelectasis``.
4. A report's label is positive if any mention is positive; else uncertain if any is uncertain;
   else 0 (negated and unmentioned findings are both 0).

Uncertain mentions
------------------
``uncertain_as_positive=True`` (the default) scores them 1. That is our choice, not a rule of
CT-RATE: it matches the view that a radiologist who writes "atelectasis cannot be excluded" has seen
something, and it suits a training label for a screening-style classifier. Pass ``False`` to score
them 0; :func:`classify_report` gives the four-way state for a caller that wants to mask them.

The vocabulary is data: extend :data:`VOCABULARY` (and the cue lists) rather than the code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.labels import CT_RATE_LABELS

POSITIVE, UNCERTAIN, NEGATIVE, ABSENT = "positive", "uncertain", "negative", "absent"

# Sites written as words: masks and pair cues share them.
_CORONARY_SITE = (
    r"\bcoronar\w*|\blad\b|\brca\b|\blcx\b|left anterior descending|\bcircumflex\b|left main coronary"
)
_CALC_CUE = r"\bcalcif\w*|\bplaques?\b|\batherosclero\w*|\batherom\w*"


# A lymph node short axis of at least 10 mm (1 cm), not preceded by "less than" / "below" / "under".
_NODE_SIZE = r"(?<!less than )(?<!below )(?<!under )(?:[1-9]\d(?:[.,]\d+)? ?mm|[1-9](?:[.,]\d+)? ?cm)\b"


@dataclass(frozen=True)
class Pair:
    """A finding cue and a site cue in the same clause, at most ``gap`` characters apart."""

    cue: str
    site: str
    gap: int = 90


@dataclass(frozen=True)
class Conditional:
    """A phrasing that counts only when ``unless`` does not occur anywhere in the clause."""

    pattern: str
    unless: str


@dataclass(frozen=True)
class LabelVocabulary:
    """How one label is written. ``exclude``: phrases blanked out of the clause before this label's
    patterns run (they mean something else); ``patterns``: phrasings of the finding."""

    patterns: list[str]
    exclude: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    conditional: list[Conditional] = field(default_factory=list)


# Up to ``n`` words (letters, digits, hyphens), each followed by blanks or a comma: the sites and
# qualifiers between a finding's words ("enlarged right paratracheal, subcarinal lymph nodes"). A
# negation or "normal" never sits inside: "enlarged heart, normal lymph nodes" is no lymphadenopathy.
def _words(n: int) -> str:
    return rf"(?:(?!(?:no|not|normal|without|heart)\b)[\w-]+,?\s+){{0,{n}}}?"


VOCABULARY: dict[str, LabelVocabulary] = {
    "Medical material": LabelVocabulary(
        patterns=[
            r"\bcatheters?\b",
            r"\bcatheteri[sz]\w*",
            r"\bpacemakers?\b",
            r"\bpacing (?:leads?|wires?)\b",
            r"\bdefibrillators?\b",
            r"\bicd\b",
            r"\bstent\w*",
            r"\btubes?\b",  # word bounded: not the "tube" of "tuberculosis"
            r"\btracheostom\w*",
            r"\bcannula\w*",
            r"\bport\b",
            r"\bport-a-cath\b",
            r"\bprosthe\w+",
            r"\bimplants?\b",
            r"\bvalve replacement\b",
            r"\bclips?\b",
            r"\bstaples?\b",
            r"\bsutures?\b",
            r"\bwires?\b",
            r"\bcerclage\b",
            r"\bsternotom\w*",
            r"\belectrodes?\b",
            r"\bcoils?\b",
            r"\bdrains?\b",
            r"\bcabg\b",
            r"\bbypass grafts?\b",
            r"\bforeign (?:body|bodies|material)\b",
            r"\b(?:medical )?devices?\b",
            r"\bmedical material\b",
            r"\bmetallic (?:material|density|densities|object|artifacts?|foreign)\b",
        ],
    ),
    "Arterial wall calcification": LabelVocabulary(
        patterns=[
            r"\baortic (?:wall )?calcification\w*",
            r"\barterial (?:wall )?calcification\w*",
            r"\bcalcified (?:atherosclerotic )?plaques? (?:in|of|within) the (?:\w+ )?aort\w*",
        ],
        # Valves, nodes and the aortopulmonary window are not arterial walls; coronary arteries have
        # their own label.
        exclude=[
            r"\b(?:aortic|mitral|tricuspid|pulmonary) valves?\b",
            r"\baorto-?pulmonary\b|\b(?:para|peri)-?aortic\b",
            r"\b(?:coronary|descending|circumflex|lad|rca|diagonal|marginal)\s+arter(?:y|ies)\b",
            r"\bcalcified (?:\w+ ){0,2}(?:nodul\w*|lymph|nodes?|granulom\w*|lesions?|foc\w*|cysts?)\b",
            r"\bpleural (?:calcified )?plaques?\b",
        ],
        pairs=[
            Pair(
                _CALC_CUE,
                r"\baort\w*|\barch\b|\barter(?:y|ies|ial)\b|\bcarotid\w*|\bsubclavian\b|\bbrachiocephalic\b"
                r"|\binnominate\b|\biliac\b|\bvascular (?:wall|structure)s?\b|\bvessel walls?\b",
            )
        ],
        # Atherosclerosis with no site named is arterial; with only a coronary site it is coronary.
        conditional=[Conditional(r"\batherosclero\w*|\batherom\w*", _CORONARY_SITE)],
    ),
    "Cardiomegaly": LabelVocabulary(
        patterns=[
            r"\bcardiomegal\w*",
            r"\bcardiac enlargement\b",
            r"\benlarge(?:d|ment of the) (?:\w+ )?(?:heart|cardiac silhouette|cardiac contour)\b",
            r"\bheart(?: size)? (?:is |was |appears |seems )?(?:\w+ )?enlarged\b",
            r"\b(?:heart|cardiac) size (?:is |was |appears )?(?:\w+ )?increased\b",
            r"\bincreased (?:heart|cardiac) size\b",
            r"\bcardiothoracic ratio (?:is |was )?(?:\w+ )?increased\b",
            r"\bincreased cardiothoracic ratio\b",
        ],
    ),
    "Pericardial effusion": LabelVocabulary(
        patterns=[
            r"\bpericardial " + _words(2) + r"(?:effusions?|fluid)\b",
            r"\bhydropericardium\b",
            r"\b(?:fluid|effusion) (?:in|within) the pericard\w*",
        ],
    ),
    "Coronary artery wall calcification": LabelVocabulary(
        patterns=[r"\bcoronary (?:artery |arterial )?(?:wall )?calcifi\w*"],
        exclude=[r"\bcalcified (?:\w+ ){0,2}(?:nodul\w*|lymph|nodes?|granulom\w*)\b"],
        pairs=[Pair(_CALC_CUE, _CORONARY_SITE, gap=100)],
    ),
    "Hiatal hernia": LabelVocabulary(
        patterns=[
            r"\bhiat(?:al|us) hernia\w*",
            r"\bhernia\w* (?:\w+ ){0,6}?(?:through|of|at) the (?:\w+ )?hiatus\b",
            r"\b(?:sliding|paraesophageal|paraoesophageal|para-esophageal) hernia\w*",
        ],
    ),
    "Lymphadenopathy": LabelVocabulary(
        patterns=[
            r"\b(?:lymph)?adenopath\w*",
            r"\benlarged " + _words(8) + r"(?:lymph ?nodes?|nodes|lymph node conglomerates?)\b",
            r"\blymph ?nodes? " + _words(6) + r"(?:enlarged|enlargement)\b",
            r"\blymph ?node enlargement\b",
            r"\bpathologic(?:al)?(?:ly)? " + _words(6) + r"(?:lymph ?nodes?|nodes)\b",
            r"\blymph ?nodes? " + _words(8) + r"(?:in|of|at|with) pathologic(?:al)? (?:size|dimensions?)\b",
            r"\blymph node conglomerat\w*|\bconglomerate (?:lymph )?nodes?\b|\bbulky (?:\w+ )?nodes?\b",
            # A short axis of 10 mm or more is the usual threshold for a pathological node.
            r"\blymph ?nodes?,? " + _words(10) + r"short[- ]axis (?:diameter )?(?:of |measuring |reaching )?"
            r"(?:up to )?" + _NODE_SIZE,
            r"\blymph ?nodes?,? " + _words(10) + _NODE_SIZE + r" (?:in )?(?:the )?short[- ]axis",
        ],
    ),
    "Emphysema": LabelVocabulary(
        patterns=[r"\bemphysem\w*", r"\bbullae?\b", r"\bbullous\b"],
        # Air in the soft tissues or mediastinum is not pulmonary emphysema.
        exclude=[r"\b(?:subcutaneous|mediastinal|interstitial soft tissue|surgical) emphysem\w*"],
    ),
    "Atelectasis": LabelVocabulary(
        patterns=[
            r"\batelecta\w*",
            r"\b(?:lobar|segmental|subsegmental|partial|complete) collapse\b",
            r"\bcollapsed? (?:of )?(?:the )?(?:\w+ ){0,2}(?:lobe|lung)\b",
        ],
    ),
    "Lung nodule": LabelVocabulary(
        patterns=[r"\bnodul\w*", r"\bmicronodul\w*"],
        # Nodules of other organs, and "nodular" said of lymph nodes or the pleura, are not lung nodules.
        exclude=[
            r"\b(?:thyroid|adrenal|hepatic|liver|breast|renal|kidney|splenic|spleen|pleural|subcutaneous"
            r"|skin|cutaneous|pancreatic) " + _words(3) + r"nodul\w*",
            r"\bnodul\w* (?:\w+ ){0,3}(?:in|of|on) the (?:\w+ )?(?:thyroid|adrenal|liver|breast|kidney|spleen"
            r"|pancreas|pleura|skin)\w*",
            r"\bnodular (?:\w+ )?(?:lymph ?nodes?|nodes?)\b",
            r"\blymph ?nodes? (?:\w+ ){0,3}nodul\w*",
            r"\bnodular (?:pleural )?thickening of the pleura\b|\bnodular pleural\b",
        ],
    ),
    "Lung opacity": LabelVocabulary(
        patterns=[
            r"\bground[- ]?glass\w*",
            r"\bopacit(?:y|ies)\b",
            r"\b(?:density|densities|attenuation) increases?\b",
            r"\bincreased (?:\w+ )?(?:density|densities|attenuation)\b",
            r"\bincrease in (?:\w+ )?(?:density|attenuation)\b",
            r"\binfiltrat\w*",
        ],
        # A consolidative, nodular, atelectatic or fibrotic "opacity" is that finding, not an opacity
        # of its own; "opacity" of sinuses or bone is not a lung finding.
        exclude=[
            r"\b(?:consolidat\w*|nodular|atelectatic|fibrotic|linear|band-like|plate-like|sclerotic)"
            r" (?:\w+ )?(?:density|densities|opacit(?:y|ies)|attenuation|infiltrat\w*)(?: increases?)?",
        ],
    ),
    "Pulmonary fibrotic sequela": LabelVocabulary(
        patterns=[
            r"\bfibrosis\b",
            r"\bfibrotic\w*",
            r"\bfibro-?atelecta\w*",
            r"\bfibrous (?:bands?|stripes?|strands?|changes?|scars?)\b",
            r"\bsequela\w*",
            r"\bscar(?:s|ring|red)?\b",
            r"\bhoneycomb\w*",
        ],
        exclude=[r"\bfibrous dysplasia\b", r"\bcystic fibrosis\b"],
    ),
    "Pleural effusion": LabelVocabulary(
        patterns=[
            # "pleural or pericardial effusion" names both; "pericardial effusion" alone is masked below.
            r"\bpleural " + _words(2) + r"(?:effusions?|fluid)\b",
            r"\bhydrothora\w*",
            r"\b(?:fluid|effusion) (?:in|within) the (?:\w+ )?pleural (?:space|cavit)\w*",
            r"\b(?:bilateral|right|left)(?:-sided)? (?!pericardial)(?:\w+ )?effusions?\b",
            r"\beffusions? " + _words(6) + r"(?:hemithora\w*|pleural spaces?)",
        ],
        # Masked unless listed with the pleura ("pleural or pericardial effusion" names both).
        exclude=[
            r"(?<!pleural or )(?<!pleural and )(?<!pleural nor )(?<!pleural/)\bpericardial (?:effusions?|fluid)\b"
        ],
    ),
    "Mosaic attenuation pattern": LabelVocabulary(
        patterns=[r"\bmosaic\w*"],
    ),
    "Peribronchial thickening": LabelVocabulary(
        patterns=[
            r"\bperibronch\w* " + _words(2) + r"thicken\w*",
            r"\bbronch\w* walls? " + _words(3) + r"thicken\w*",
            r"\bthicken\w* (?:of )?(?:the )?(?:\w+ )?(?:peribronch\w*|bronchial)\b",
            r"\bthicken\w* (?:of )?(?:the )?(?:\w+ )?bronch(?:ial|us|i) walls?\b",
            r"\bperibronchial cuffing\b",
        ],
    ),
    "Consolidation": LabelVocabulary(
        patterns=[r"\bconsolidat\w*", r"\bair bronchograms?\b"],
    ),
    "Bronchiectasis": LabelVocabulary(
        patterns=[r"\bbronchiecta\w*"],
    ),
    "Interlobular septal thickening": LabelVocabulary(
        patterns=[
            r"\bseptal " + _words(1) + r"thicken\w*",
            r"\binterlobular sept\w* " + _words(3) + r"thicken\w*",
            r"\bthicken\w* (?:of )?(?:the )?(?:interlobular|interlobar) sept\w*",
            r"\bcrazy[- ]paving\b",
        ],
        # Septa of the heart are not lung septa.
        exclude=[r"\b(?:interventricular|interatrial|ventricular|atrial|nasal) sept\w*(?: \w+)?"],
    ),
}
assert list(VOCABULARY) == CT_RATE_LABELS

# Cues that negate a mention after them ("no", "without") or before them ("... is not seen").
NEGATION_BEFORE = [
    r"\bno\b",
    r"\bnot\b",
    r"\bwithout\b",
    r"\bnegative for\b",
    r"\bfree of\b",
    r"\babsence of\b",
    r"\bneither\b",
    r"\bnor\b",
    r"\bnone\b",
    r"\bunlikely\b",
    r"\bruled out\b",
]
NEGATION_AFTER = [
    r"\bnot\b",
    r"\bnone\b",
    r"\babsent\b",
    r"\bresolved\b",
    r"\bdisappeared\b",
    r"\bruled out\b",
    r"\bexcluded\b",
    r"\bunlikely\b",
    r"\bnegative\b",
]
# Hedges, found first and masked, so that the "not" of "cannot be excluded" is no negation. Most
# hedges come before their finding ("possible atelectasis"): after one ("consolidation, possibly
# infectious") they qualify something else. Those that follow their finding are listed apart.
UNCERTAINTY_BEFORE = [
    r"\bpossib(?:le|ly|ility of)\b",
    r"\b(?:likely|probable|probably)\b",
    r"\bsuspicious (?:for|of)\b",
    r"\bsuspect(?:ed)?\b",
    r"\bmay (?:represent|be|reflect|indicate|correspond to)\b",
    r"\bmight (?:represent|be|reflect|indicate)\b",
    r"\bquestionabl[ey]\b",
    r"\bequivocal\b",
    r"\bsuggestive of\b",
    r"\bdifferential diagnos\w*",
    r"\b(?:to )?rule out\b",
    r"\?",
]
UNCERTAINTY_AFTER = [
    r"\bcan ?not be (?:entirely |completely |definitely )?(?:excluded|ruled out|differentiated|distinguished)",
    r"\bcould not be (?:entirely |completely |definitely )?(?:excluded|ruled out)",
    r"\bnot (?:be )?(?:entirely |completely |definitely )?(?:excluded|ruled out)",
    # "Atelectasis is likely", not "nodule, likely granuloma" (the nodule is certain).
    r"\b(?:is|are|was|were) (?:likely|probable|suspected|questionable)\b|\bsuspected\b",
    r"\?",
]
# Words that end a clause's subject: a cue's reach stops at a comma / "and" / "with" after one of them.
_VERB = re.compile(
    r"\b(?:is|are|was|were|seen|observed|detected|noted|identified|present|evident|visuali[sz]ed"
    r"|demonstrated|shown|found|has|have|appears?|shows?)\b"
)
_SOFT_BOUNDARY = re.compile(r",|\band\b|\bwith\b|\bwhile\b")
# Always the end of a cue's reach.
_HARD_BOUNDARY = re.compile(
    r"\bthere (?:is|are|was|were)\b|\bexcept\b|\bapart from\b|\baside from\b|\bother than\b|:"
)
# Clause splits: sentence ends (also "observed.No", a stop glued to a capital), line breaks, ";",
# and the contrastive conjunctions, which start a new polarity.
_CLAUSE_SPLIT = re.compile(
    r"(?<=[.!?])\s+|(?<=[a-z)][.!?])(?=[A-Z])|[\r\n]+|;"
    r"|(?i:\s+but\s+|,?\s+however,?\s+|\s+whereas\s+|,?\s+although\s+)"
)
_POST_REACH = 80  # characters after a mention in which a trailing negation cue still applies

_NEG_BEFORE = [re.compile(p) for p in NEGATION_BEFORE]
_NEG_AFTER = [re.compile(p) for p in NEGATION_AFTER]
_UNCERTAIN_BEFORE = [re.compile(p) for p in UNCERTAINTY_BEFORE]
_UNCERTAIN_AFTER = [re.compile(p) for p in UNCERTAINTY_AFTER]


@dataclass(frozen=True)
class _Compiled:
    patterns: list[re.Pattern[str]]
    exclude: list[re.Pattern[str]]
    pairs: list[tuple[re.Pattern[str], re.Pattern[str], int]]
    conditional: list[tuple[re.Pattern[str], re.Pattern[str]]]


def _compile(vocabulary: dict[str, LabelVocabulary]) -> dict[str, _Compiled]:
    return {
        label: _Compiled(
            patterns=[re.compile(p) for p in v.patterns],
            exclude=[re.compile(p) for p in v.exclude],
            pairs=[(re.compile(p.cue), re.compile(p.site), p.gap) for p in v.pairs],
            conditional=[(re.compile(c.pattern), re.compile(c.unless)) for c in v.conditional],
        )
        for label, v in vocabulary.items()
    }


_COMPILED = _compile(VOCABULARY)


def split_clauses(text: str) -> list[str]:
    """Lower-cased clauses of ``text`` (sentence ends, ``;``, ``but``/``however``/... split), hyphen
    and blank runs normalised; a ``?`` stays with its clause (it is an uncertainty cue)."""
    clauses = []
    for part in _CLAUSE_SPLIT.split(text):
        clause = re.sub(r"\s+", " ", part).strip().lower()
        if clause:
            clauses.append(clause)
    return clauses


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span replaced by blanks of the same length (offsets are kept)."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def _mentions(clause: str, compiled: _Compiled) -> list[tuple[int, int]]:
    """(start, end) of each mention of one label in a clause."""
    text = _blank(clause, [m.span() for rx in compiled.exclude for m in rx.finditer(clause)])
    spans = [m.span() for rx in compiled.patterns for m in rx.finditer(text)]
    for cue_rx, site_rx, gap in compiled.pairs:
        cues = [m.span() for m in cue_rx.finditer(text)]
        for site in site_rx.finditer(text):
            near = [c for c in cues if max(c[0], site.start()) - min(c[1], site.end()) <= gap]
            if near:
                # The nearest cue: "calcification of the aorta, no coronary calcification" pairs each
                # site with its own cue.
                cue = min(near, key=lambda c: abs((c[0] + c[1]) / 2 - (site.start() + site.end()) / 2))
                spans.append((min(cue[0], site.start()), max(cue[1], site.end())))
    for rx, unless in compiled.conditional:
        # Tested on the unmasked clause: the masks may have blanked the very site ("coronary arteries").
        if not unless.search(clause):
            spans.extend(m.span() for m in rx.finditer(text))
    return spans


def _reach_forward(clause: str, start: int) -> int:
    """Where the reach of a cue ending at ``start`` ends (module docstring, step 3)."""
    hard = _HARD_BOUNDARY.search(clause, start)
    end = hard.start() if hard else len(clause)
    verb_seen = False
    position = start
    for boundary in _SOFT_BOUNDARY.finditer(clause, start, end):
        verb_seen = verb_seen or bool(_VERB.search(clause, position, boundary.start()))
        if verb_seen:
            return boundary.start()
        position = boundary.end()
    return end


def _reach_back(clause: str, end: int) -> int:
    """Where the backward reach of a cue starting at ``end`` begins: after the last hard boundary, or
    after the last comma / "and" / "with" that follows a verb of an earlier phrase."""
    begin = 0
    for hard in _HARD_BOUNDARY.finditer(clause, 0, end):
        begin = hard.end()
    boundaries = list(_SOFT_BOUNDARY.finditer(clause, begin, end))
    previous = begin
    cut = begin
    for boundary in boundaries:
        if _VERB.search(clause, previous, boundary.start()):
            cut = boundary.end()
        previous = boundary.end()
    return cut


def _distance(
    clause: str, span: tuple[int, int], before: list[tuple[int, int]], after: list[tuple[int, int]]
) -> float:
    """Characters between a mention and the nearest cue that reaches it (``before``: cues reaching
    forward, ``after``: cues reaching back; 0 for a cue inside the mention); inf if none does."""
    start, end = span
    best = math.inf
    for cue_start, cue_end in before:
        if cue_start < end and cue_end > start:
            return 0.0
        if cue_end <= start and _reach_forward(clause, cue_end) > start:
            best = min(best, start - cue_end)
    for cue_start, cue_end in after:
        if cue_start < end and cue_end > start:
            return 0.0
        if cue_start >= end and cue_start - end <= _POST_REACH and _reach_back(clause, cue_start) < end:
            best = min(best, cue_start - end)
    return best


@dataclass(frozen=True)
class _Cues:
    """The hedge and negation cues of one clause; ``text`` is the clause with the hedges blanked."""

    clause: str
    text: str
    hedge_before: list[tuple[int, int]]
    hedge_after: list[tuple[int, int]]
    negation_before: list[tuple[int, int]]
    negation_after: list[tuple[int, int]]


def _cues(clause: str) -> _Cues:
    hedge_before = [m.span() for rx in _UNCERTAIN_BEFORE for m in rx.finditer(clause)]
    hedge_after = [m.span() for rx in _UNCERTAIN_AFTER for m in rx.finditer(clause)]
    text = _blank(clause, hedge_before + hedge_after)
    negation_before = [m.span() for rx in _NEG_BEFORE for m in rx.finditer(text)]
    negation_after = [m.span() for rx in _NEG_AFTER for m in rx.finditer(text)]
    return _Cues(clause, text, hedge_before, hedge_after, negation_before, negation_after)


def _state(cues: _Cues, span: tuple[int, int]) -> str:
    """A mention's state: the nearest cue that reaches it decides ("No consolidation, possibly
    atelectasis": the consolidation is negated, the atelectasis hedged)."""
    hedged = _distance(cues.clause, span, cues.hedge_before, cues.hedge_after)
    negated = _distance(cues.text, span, cues.negation_before, cues.negation_after)
    if hedged == negated == math.inf:
        return POSITIVE
    return UNCERTAIN if hedged <= negated else NEGATIVE


_RANK = {ABSENT: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}


def _is_blank(text: Any) -> bool:
    if text is None:
        return True
    if isinstance(text, float) and math.isnan(text):
        return True
    return not str(text).strip()


def is_blank_report(text: Any) -> bool:
    """Whether a report cell holds no text (None, NaN or blanks): it gets all-0 labels."""
    return _is_blank(text)


def classify_report(text: str | None) -> dict[str, str]:
    """label -> ``positive`` / ``uncertain`` / ``negative`` / ``absent`` (never mentioned).

    Across mentions, positive beats uncertain beats negative: "No new nodule. Stable 4 mm nodule in
    the right upper lobe." is positive.
    """
    states = dict.fromkeys(CT_RATE_LABELS, ABSENT)
    if _is_blank(text):
        return states
    for clause in split_clauses(str(text)):
        cues: _Cues | None = None  # found once per clause, and only if something is mentioned
        for label, compiled in _COMPILED.items():
            if states[label] == POSITIVE:
                continue
            for span in _mentions(clause, compiled):
                cues = cues or _cues(clause)
                state = _state(cues, span)
                if _RANK[state] > _RANK[states[label]]:
                    states[label] = state
                if state == POSITIVE:
                    break
    return states


def label_report(text: str | None, uncertain_as_positive: bool = True) -> dict[str, int]:
    """label name -> 1/0 for one report (blank text: all 0). Uncertain mentions score
    ``int(uncertain_as_positive)`` (module docstring)."""
    positive = {POSITIVE, UNCERTAIN} if uncertain_as_positive else {POSITIVE}
    return {label: int(state in positive) for label, state in classify_report(text).items()}


def label_reports(texts: Sequence[str | None], uncertain_as_positive: bool = True) -> np.ndarray:
    """(N, 18) int64 array of 0/1, columns in ``CT_RATE_LABELS`` order; blank or NaN texts are all 0."""
    out = np.zeros((len(texts), len(CT_RATE_LABELS)), dtype=np.int64)
    for i, text in enumerate(texts):
        labels = label_report(text, uncertain_as_positive)
        out[i] = [labels[name] for name in CT_RATE_LABELS]
    return out
