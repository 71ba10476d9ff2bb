"""Decoder inputs and targets for the CapPa report-generation objective (COLIPRI Sec. 4.2).

One report (``{section: [sentence, ...]}``, see ``datamodules.report_sections``) becomes a
sequence of fixed length ``L = header_length + num_slots``:

``target = headers + slots``

- ``headers``: the tokens of all eight section headers (``"<Section>:"``) grouped at the start,
  in the section order. The order is shuffled in training (a regulariser, COLIPRI Sec. 4.2) and
  canonical otherwise. The block's length does not depend on the order, only on the tokenizer.
  Headers are given to the decoder and never predicted (label −100): they tell it which order to
  write the sections in.
- ``slots``: exactly ``num_slots`` tokens: for each section in the same order, its sentences'
  tokens followed by one separator token (``sep_id``, the tokenizer's SEP/EOS), so an empty
  section is a lone separator and the eighth separator ends the report; then padding (pad id) up
  to ``num_slots``, or truncation to it. Content and separators are predicted; padding is not
  (label −100). Headers are not repeated in the slots: the k-th separator closes the k-th section
  of the header block, so no header token is ever part of the loss.

Grouping the headers and using a **fixed** number of slots is what stops parallel decoding from
leaking the findings: with headers interleaved in the input, the number of mask tokens between two
headers would reveal how long (how abnormal) each section is. Here the parallel input depends on
the section order only, never on the report.

Two inputs share one ``labels`` tensor (output at position ``j`` predicts ``labels[j]``), as in
big_vision CapPa:

- causal (teacher forcing): ``input_ids = [start_id] + target[:-1]`` with a causal attention mask.
  ``start_id`` defaults to the pad id, like big_vision's ``shift_right`` (which pads with 0).
- parallel: ``parallel_input_ids = headers + [mask_token_id] * num_slots`` with full attention.
  ``mask_token_id = len(tokenizer)``, i.e. one extra embedding row beyond the tokenizer's
  vocabulary (big_vision CapPa uses ``vocab_size`` the same way); see ``CapPaHead``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.report_sections import SECTION_NAMES

IGNORE_INDEX = -100


@dataclass(frozen=True)
class CapPaExample:
    """Decoder tensors of one report; all 1-D of the same length except ``header_ids``."""

    input_ids: torch.Tensor  # causal teacher-forcing input
    parallel_input_ids: torch.Tensor  # headers, then mask_token_id in every slot
    labels: torch.Tensor  # -100 on headers and padding
    header_ids: torch.Tensor  # the header block: the prompt for generation
    section_order: tuple[str, ...]


class CapPaTargetBuilder:
    """Tokenises structured reports into fixed-length CapPa inputs/targets (any HF tokenizer).

    ``sep_id`` (the section separator, which also ends the report) defaults to the tokenizer's
    SEP token, else its EOS token; ``start_id`` to the pad id (else ``sep_id``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_slots: int,
        section_names: Sequence[str] = SECTION_NAMES,
        start_id: int | None = None,
        sep_id: int | None = None,
    ) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        self.tokenizer = tokenizer
        self.num_slots = num_slots
        self.section_names = tuple(section_names)
        self.vocab_size = len(tokenizer)
        self.mask_token_id = self.vocab_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if sep_id is None:
            sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if sep_id is None:
            raise ValueError("The tokenizer has neither a SEP nor an EOS token: pass sep_id explicitly")
        self.sep_id = int(sep_id)
        if start_id is None:
            start_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.sep_id
        self.start_id = int(start_id)
        self._header_tokens = dict(
            zip(self.section_names, self._tokenize([f"{name}:" for name in self.section_names]), strict=True)
        )
        self.header_length = sum(len(ids) for ids in self._header_tokens.values())
        self.length = self.header_length + num_slots

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def section_order(self, rng: random.Random | None) -> tuple[str, ...]:
        """Canonical order without ``rng`` (evaluation), a shuffled one with it (training)."""
        order = list(self.section_names)
        if rng is not None:
            rng.shuffle(order)
        return tuple(order)

    def header_block(self, order: Sequence[str]) -> list[int]:
        return [token for name in order for token in self._header_tokens[name]]

    def slot_tokens(
        self, sections: Mapping[str, Sequence[str]], order: Sequence[str]
    ) -> tuple[list[int], int]:
        """(exactly ``num_slots`` token ids, number of real, non-padding tokens)."""
        unknown = set(sections) - set(self.section_names)
        if unknown:
            raise ValueError(f"Unknown sections {sorted(unknown)}; valid: {', '.join(self.section_names)}")
        contents = self._tokenize([" ".join(sections.get(name, ())) for name in order])
        tokens = [token for content in contents for token in [*content, self.sep_id]]
        tokens = tokens[: self.num_slots]
        real = len(tokens)
        return tokens + [self.pad_id] * (self.num_slots - real), real

    def __call__(
        self,
        sections: Mapping[str, Sequence[str]],
        rng: random.Random | None = None,
        order: Sequence[str] | None = None,
    ) -> CapPaExample:
        """Tensors of one report, sections in ``order`` if given, else ``section_order(rng)``."""
        if order is None:
            order = self.section_order(rng)
        elif sorted(order) != sorted(self.section_names):
            raise ValueError(f"order must be a permutation of {self.section_names}, got {tuple(order)}")
        order = tuple(order)
        headers = self.header_block(order)
        slots, real = self.slot_tokens(sections, order)
        target = torch.tensor(headers + slots, dtype=torch.long)
        labels = target.clone()
        labels[: self.header_length] = IGNORE_INDEX
        labels[self.header_length + real :] = IGNORE_INDEX
        input_ids = torch.cat([torch.tensor([self.start_id]), target[:-1]])
        parallel = torch.cat(
            [
                target[: self.header_length],
                torch.full((self.num_slots,), self.mask_token_id, dtype=torch.long),
            ]
        )
        return CapPaExample(
            input_ids=input_ids,
            parallel_input_ids=parallel,
            labels=labels,
            header_ids=target[: self.header_length].clone(),
            section_order=order,
        )

    def slot_ids(self, example_labels: torch.Tensor) -> list[int]:
        """The predicted part of a ``labels`` row (content and separators, no padding)."""
        slots = example_labels[self.header_length :]
        return [int(i) for i in slots[slots != IGNORE_INDEX]]

    def decode_sections(
        self, slot_ids: Sequence[int] | torch.Tensor, order: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Slot tokens (generated or reference) → ``{section: text}`` in ``order`` (canonical if
        ``None``): the k-th separator closes the k-th section; sections after the last separator
        (a truncated or unfinished report) get whatever tokens are left, or nothing."""
        order = tuple(order) if order is not None else self.section_names
        ids = [int(i) for i in slot_ids if int(i) != self.mask_token_id]
        parts: list[list[int]] = [[]]
        for token in ids:
            if token == self.sep_id:
                if len(parts) == len(order):
                    break
                parts.append([])
            else:
                parts[-1].append(token)
        parts += [[] for _ in range(len(order) - len(parts))]
        texts = [self.tokenizer.decode(p, skip_special_tokens=True).strip() for p in parts]
        return dict(zip(order, texts, strict=True))

    def decode(self, slot_ids: Sequence[int] | torch.Tensor, order: Sequence[str] | None = None) -> str:
        """Slot tokens → one line per section, ``"<Section>: <text>"``, in ``order``."""
        return "\n".join(f"{name}: {text}" for name, text in self.decode_sections(slot_ids, order).items())


def stack_examples(examples: Sequence[CapPaExample]) -> dict[str, torch.Tensor | list[tuple[str, ...]]]:
    """Batch examples; every example of one builder has the same length, so no padding is needed."""
    return {
        "input_ids": torch.stack([e.input_ids for e in examples]),
        "parallel_input_ids": torch.stack([e.parallel_input_ids for e in examples]),
        "labels": torch.stack([e.labels for e in examples]),
        "header_ids": torch.stack([e.header_ids for e in examples]),
        "section_order": [e.section_order for e in examples],
    }
