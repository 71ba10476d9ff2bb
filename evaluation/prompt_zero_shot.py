"""GreenRFM zero-shot diagnosis: five prompt pairs scored by raw dot products (paper Eq. 5).

For label c with positive prompt t+ and negative prompt t−, an image embedding v scores

    P(c | v) = exp(v·t+) / (exp(v·t+) + exp(v·t−)) = sigmoid(v·t+ − v·t−),

the sigmoid form being the numerically stable one. Unlike ``evaluation.zero_shot`` there is no L2
normalisation and no temperature: GreenRFM trains on raw dot products, so the embedding norms
carry confidence and must be kept at inference.

The paper reports robustness over five prompt pairs (P1..P5 below); P1 is the public code's
default and "There is {p}." the paper's Grad-CAM prompt. ``{p}`` is the label name lower-cased
("Pleural effusion" -> "There is pleural effusion."). The paper writes "{pathology}" without
saying which case; the public code (SadVoxel/GreenRFM, ``inference/zero_shot.py``) inserts the
label names verbatim ("There is Pleural effusion."). Its CXR-BERT tokenizer is a ``BertTokenizer``,
which lower-cases by default, so for that encoder both spellings should give the same tokens, and
lower case is the natural sentence for any cased encoder. ``lowercase=False`` keeps the names
verbatim, as the public code does.

P2's negative prompt is the empty string. It is passed to the text encoder as "" like any other
text: a BERT tokenizer turns it into "[CLS] [SEP]", whose [CLS] embedding is a fixed "nothing
stated" anchor for every label. ``encode_text`` must therefore accept empty strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evaluation.zero_shot import TextEncoderFn

# (positive, negative) templates, in the paper's order P1..P5; index 0 is P1.
GREENRFM_PROMPTS: tuple[tuple[str, str], ...] = (
    ("{p}.", "not {p}."),
    ("{p}.", ""),
    ("There is {p}.", "There is no {p}."),
    ("{p} is present.", "{p} is not present."),
    ("Findings are compatible with {p}.", "Findings are not compatible with {p}."),
)
PROMPT_KEYS = tuple(f"p{i + 1}" for i in range(len(GREENRFM_PROMPTS)))


def prompt_texts(
    label_names: Sequence[str], pair_index: int, lowercase: bool = True
) -> tuple[list[str], list[str]]:
    """(positive, negative) prompt lists, one entry per label, for pair ``pair_index`` (0 = P1)."""
    if not 0 <= pair_index < len(GREENRFM_PROMPTS):
        raise ValueError(f"pair_index must be in [0, {len(GREENRFM_PROMPTS)}), got {pair_index}")
    positive, negative = GREENRFM_PROMPTS[pair_index]
    names = [n.lower() if lowercase else n for n in label_names]
    return [positive.format(p=n) for n in names], [negative.format(p=n) for n in names]


def prompt_scores(image_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor) -> torch.Tensor:
    """(N, K) scores sigmoid(v·t+ − v·t−) = the two-way softmax of the raw dot products.

    ``image_emb`` (N, C); ``pos_emb``, ``neg_emb`` (K, C). No normalisation, no temperature.
    """
    image = image_emb.float()
    return torch.sigmoid(image @ pos_emb.float().T - image @ neg_emb.float().T)


def zero_shot_prompt_scores(
    image_emb: torch.Tensor, encode_text: TextEncoderFn, label_names: Sequence[str], lowercase: bool = True
) -> dict[str, torch.Tensor]:
    """Scores (N, K) under each prompt pair ("p1".."p5") and their mean ("mean").

    Every distinct prompt text is encoded once, in one ``encode_text`` call (P1 and P2 share their
    positives, and P2's negative "" is a single text for all labels).
    """
    pairs = [prompt_texts(label_names, i, lowercase) for i in range(len(GREENRFM_PROMPTS))]
    unique = list(dict.fromkeys(text for positive, negative in pairs for text in (*positive, *negative)))
    embeddings = encode_text(unique).float().to(image_emb.device)
    row = {text: i for i, text in enumerate(unique)}
    scores = {}
    for key, (positive, negative) in zip(PROMPT_KEYS, pairs, strict=True):
        pos = embeddings[[row[t] for t in positive]]
        neg = embeddings[[row[t] for t in negative]]
        scores[key] = prompt_scores(image_emb, pos, neg)
    scores["mean"] = torch.stack([scores[k] for k in PROMPT_KEYS]).mean(dim=0)
    return scores
