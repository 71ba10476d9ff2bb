"""Batch assembly: stack tensors, keep strings as lists, tokenise reports (and CapPa targets)
in the worker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.batching import stack_samples

if TYPE_CHECKING:
    from datamodules.cappa_targets import CapPaTargetBuilder


class PairedCollator:
    """Collates sample dicts into a batch dict; adds ``input_ids``/``attention_mask``.

    With ``cappa_targets`` (report generation active) it also adds ``cappa``: the fixed-length
    decoder tensors of each sample's ``sections``, in that sample's section order
    (``input_ids``, ``parallel_input_ids``, ``labels`` (B, L); ``header_ids`` (B, H)).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        cappa_targets: CapPaTargetBuilder | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cappa_targets = cappa_targets

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = stack_samples(samples)
        tokens = self.tokenizer(
            batch["report"],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch["input_ids"] = tokens["input_ids"]
        batch["attention_mask"] = tokens["attention_mask"]
        if self.cappa_targets is not None:
            examples = [self.cappa_targets(s, order=tuple(s)) for s in batch["sections"]]
            batch["cappa"] = {
                "input_ids": torch.stack([e.input_ids for e in examples]),
                "parallel_input_ids": torch.stack([e.parallel_input_ids for e in examples]),
                "labels": torch.stack([e.labels for e in examples]),
                "header_ids": torch.stack([e.header_ids for e in examples]),
            }
        return batch
