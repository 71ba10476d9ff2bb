"""Batch assembly: stack tensors, keep strings as lists, tokenise reports in the worker."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


class PairedCollator:
    """Collates sample dicts into a batch dict; adds ``input_ids``/``attention_mask``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            elif isinstance(values[0], int):
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                batch[key] = values
        tokens = self.tokenizer(
            batch["report"],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch["input_ids"] = tokens["input_ids"]
        batch["attention_mask"] = tokens["attention_mask"]
        return batch
