"""Zero-shot classification from class prompt embeddings (COLIPRI App. C.3).

Two prompt styles, each giving one "present" and one "absent" text embedding per label:

- **native:** the mean embedding of up to 50 Findings sections of *training* volumes positive for
  the label, against the mean of up to 50 negative ones. Long reports are what the text encoder
  was trained on, so this measures alignment without a prompt distribution shift. Training
  reports only: drawing them from the evaluated split would leak its labels into the prompts.
- **short:** "{label} present" against "No {label} present".

Each image embedding is compared with both prompts by cosine similarity, the two similarities are
divided by a fixed temperature of 0.07 and soft-maxed; the probability of the "present" prompt is
the score (not the learned CLIP temperature: the paper fixes 0.07 so models compare fairly).
Scores feed the same metrics and validation-fitted thresholds as the probes.

Report embeddings are L2-normalised before averaging (as ``colipri``'s ``encode_text`` returns
them), so every report weighs the same whatever its embedding norm.

A model trained on raw dot products (GreenRFM) is scored the way it was trained
(``normalise=False``): no normalisation anywhere, temperature 1, native prompts the plain mean of
the report embeddings.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

TEMPERATURE = 0.07
SHORT_TEMPLATES = ("{label} present", "No {label} present")
PROMPT_STYLES = ("native", "short")

# texts -> (len(texts), C) pooled text embeddings
TextEncoderFn = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class ClassPrompts:
    """Unit-norm "present" and "absent" embeddings, (K, C) each; NaN rows where a label has none."""

    positive: torch.Tensor
    negative: torch.Tensor


def short_prompts(label_names: Sequence[str]) -> tuple[list[str], list[str]]:
    positive, negative = SHORT_TEMPLATES
    return [positive.format(label=n) for n in label_names], [negative.format(label=n) for n in label_names]


def _unit(embeddings: torch.Tensor, normalise: bool) -> torch.Tensor:
    return F.normalize(embeddings.float(), dim=-1) if normalise else embeddings.float()


def short_class_prompts(
    label_names: Sequence[str], encode: TextEncoderFn, normalise: bool = True
) -> ClassPrompts:
    positive, negative = short_prompts(label_names)
    embeddings = _unit(encode([*positive, *negative]), normalise)
    return ClassPrompts(embeddings[: len(positive)], embeddings[len(positive) :])


def sample_native_reports(
    reports: Sequence[str],
    labels: torch.Tensor,
    label_names: Sequence[str],
    per_class: int = 50,
    seed: int = 0,
) -> list[tuple[list[int], list[int]]]:
    """Per label, (positive, negative) indices into ``reports``: up to ``per_class`` each, drawn
    without replacement (seeded) among the reports with a known label and non-empty text.

    A label with fewer candidates uses all of them, with one warning listing such labels.
    """
    if labels.shape != (len(reports), len(label_names)):
        raise ValueError(
            f"labels must be (len(reports), K) = ({len(reports)}, {len(label_names)}), got {tuple(labels.shape)}"
        )
    has_text = torch.tensor([bool(r.strip()) for r in reports], dtype=torch.bool)
    rng = random.Random(seed)
    chosen: list[tuple[list[int], list[int]]] = []
    short: list[str] = []
    for k, name in enumerate(label_names):
        groups = []
        for value in (1.0, 0.0):
            candidates = torch.nonzero((labels[:, k] == value) & has_text).flatten().tolist()
            if len(candidates) < per_class:
                short.append(f"{name} ({'positive' if value else 'negative'}: {len(candidates)})")
            groups.append(sorted(rng.sample(candidates, min(per_class, len(candidates)))))
        chosen.append((groups[0], groups[1]))
    if short:
        log.warning("Native zero-shot: fewer than %d training reports for %s", per_class, "; ".join(short))
    return chosen


def _group_means(embeddings: torch.Tensor, groups: list[list[int]], normalise: bool) -> torch.Tensor:
    rows = [embeddings[g].mean(dim=0) if g else torch.full((embeddings.shape[1],), math.nan) for g in groups]
    return _unit(torch.stack(rows), normalise)


def native_class_prompts(
    reports: Sequence[str],
    labels: torch.Tensor,
    label_names: Sequence[str],
    encode: TextEncoderFn,
    per_class: int = 50,
    seed: int = 0,
    normalise: bool = True,
) -> ClassPrompts:
    """Mean unit-norm embeddings of the sampled training reports (each report encoded once)."""
    chosen = sample_native_reports(reports, labels, label_names, per_class, seed)
    used = sorted({i for pos, neg in chosen for i in (*pos, *neg)})
    row = {report_index: r for r, report_index in enumerate(used)}
    if not used:
        raise ValueError("Native zero-shot needs training reports with known labels; none were found")
    embeddings = _unit(encode([reports[i] for i in used]), normalise)
    positive = _group_means(embeddings, [[row[i] for i in pos] for pos, _ in chosen], normalise)
    negative = _group_means(embeddings, [[row[i] for i in neg] for _, neg in chosen], normalise)
    return ClassPrompts(positive, negative)


def zero_shot_scores(
    image_embeddings: torch.Tensor,
    prompts: ClassPrompts,
    temperature: float = TEMPERATURE,
    normalise: bool = True,
) -> torch.Tensor:
    """(N, K) probability of "present": softmax over (cos(img, present), cos(img, absent)) / T
    (raw dot products with ``normalise=False``: pass ``temperature=1``)."""
    image = _unit(image_embeddings, normalise)
    logits = torch.stack([image @ prompts.positive.T, image @ prompts.negative.T], dim=-1) / temperature
    return logits.softmax(dim=-1)[..., 0]
