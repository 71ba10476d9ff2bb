"""Uniferum's fusion transformer: [CLS] + visual tokens + [SEP] + task tokens, with positions, through
the first N layers of a BERT-style text model (Uniferum Sec. 3.2; PubMedBERT in the paper, MiniLM by
default here; any local directory works).

The sequence is ``concat([v_cls, W v_1..v_N, v_sep, E_t])`` where ``W`` projects the visual channels to
the text width, ``v_cls``/``v_sep`` are learned, and ``E_t`` are the text model's word embeddings of
the task (no special tokens: the learned [SEP] separates it). The text model's embedding layer adds
position (0..L-1) and token-type embeddings and its LayerNorm; then N bidirectional layers. Outputs
are the [CLS] state (classification) and the N visual states (segmentation).
``freeze_word_embeddings`` keeps the vocabulary table fixed (``model.text.freeze``); the position
and type embeddings, the LayerNorm and the fusion layers always train.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModel

from lightning_modules.nets.text_encoder import _needs_remote_code, resolve_text_model_path


class FusionOutput(NamedTuple):
    cls: torch.Tensor  # (B, H)
    visual: torch.Tensor  # (B, N, H)


class TaskFusion(nn.Module):
    def __init__(
        self, text_model: str | None, num_layers: int, visual_dim: int, freeze_word_embeddings: bool = False
    ) -> None:
        super().__init__()
        path = resolve_text_model_path(text_model)
        model = AutoModel.from_pretrained(path, trust_remote_code=_needs_remote_code(path))
        if hasattr(model, "bert"):  # CXR-BERT style wrappers
            model = model.bert
        if not (
            hasattr(model, "embeddings") and hasattr(model, "encoder") and hasattr(model.encoder, "layer")
        ):
            raise TypeError(f"{path}: the fusion needs a BERT-style encoder (embeddings + encoder.layer)")
        available = len(model.encoder.layer)
        if not 1 <= num_layers <= available:
            raise ValueError(f"fusion_layers={num_layers}, but {path} has {available} layers")
        model.encoder.layer = model.encoder.layer[:num_layers]
        model.config.num_hidden_layers = num_layers
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model.train()  # from_pretrained returns eval mode; train like any fresh module
        if freeze_word_embeddings:  # the text-only part: its vocabulary table (most of MiniLM's weights)
            self.model.embeddings.word_embeddings.requires_grad_(False)
        self.model_path = path
        self.hidden = int(model.config.hidden_size)
        self.max_positions = int(model.config.max_position_embeddings)
        self.visual_proj = nn.Linear(visual_dim, self.hidden)
        self.cls_token = nn.Parameter(torch.randn(1, 1, self.hidden) * 0.02)
        self.sep_token = nn.Parameter(torch.randn(1, 1, self.hidden) * 0.02)

    def project(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, visual_dim) -> (B, N, hidden): done once per volume, shared by its tasks."""
        return self.visual_proj(visual)

    def forward(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> FusionOutput:
        """``visual`` already projected (B, N, H); task ``input_ids``/``attention_mask`` (B, L)."""
        batch, n_visual = visual.shape[:2]
        text = self.model.embeddings.word_embeddings(input_ids)
        sequence = torch.cat(
            [self.cls_token.expand(batch, -1, -1), visual, self.sep_token.expand(batch, -1, -1), text], dim=1
        )
        length = sequence.shape[1]
        if length > self.max_positions:
            raise ValueError(
                f"fusion sequence of {length} tokens ({n_visual} visual + task) exceeds the text model's "
                f"{self.max_positions} positions; use a smaller input or shorter task texts"
            )
        mask = torch.cat([attention_mask.new_ones(batch, n_visual + 2), attention_mask], dim=1)
        positions = torch.arange(length, device=sequence.device).expand(batch, -1)
        hidden = self.model(
            inputs_embeds=sequence, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        return FusionOutput(cls=hidden[:, 0], visual=hidden[:, 1 : 1 + n_visual])
