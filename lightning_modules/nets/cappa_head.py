"""CapPa report decoder: a small pre-norm transformer that cross-attends to image tokens.

COLIPRI Sec. 4.2 (Fig. 4) follows CapPa (Tschannen et al., big_vision ``cappa``): a text decoder
reads the vision encoder's tokens through cross-attention and is trained either

- *causally* (teacher forcing, lower-triangular self-attention mask), or
- *in parallel* (every content slot is the mask token, full self-attention, all tokens predicted
  in one pass),

alternating between the two per step (the split is the LightningModule's business). Inputs and
labels come from ``datamodules.cappa_targets.CapPaTargetBuilder``.

Layout, Eva02-style pre-norm blocks: ``x += SelfAttn(LN(x)); x += CrossAttn(LN(x), image);
x += SwiGLU(LN(x))``, then a final LayerNorm and a linear layer to ``vocab_size`` logits.

- The token embedding has ``vocab_size + 1`` rows; the last one, id ``vocab_size``, is the mask
  token (as in big_vision CapPa). It is never an output class.
- Positions are learned absolute embeddings (``max_len`` of them) rather than Eva02's RoPE:
  the sequences are short and of fixed length.
- The MLP is timm's ``SwiGLU`` with hidden width ``mlp_ratio * width * 2 / 3`` (Eva02's choice:
  the parameter count of a GELU MLP of ratio ``mlp_ratio``).
- Attention is written out (a fused qkv projection + ``F.scaled_dot_product_attention``) because
  timm's ``Attention`` takes no attention mask for self-attention and has no cross-attention.
- Image tokens are projected from ``image_dim`` to ``width`` once (LayerNorm + Linear) and shared
  by all blocks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import SwiGLU
from torch import nn

IGNORE_INDEX = -100


class _MultiHeadAttention(nn.Module):
    """Multi-head attention over SDPA; self-attention when ``context`` is ``None``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CapPaBlock(nn.Module):
    """Pre-norm decoder block: masked self-attention, cross-attention to the image, SwiGLU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = _MultiHeadAttention(width, heads)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = _MultiHeadAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = SwiGLU(width, hidden_features=int(width * mlp_ratio * 2 / 3))

    def forward(self, x: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_self(x), mask=mask)
        x = x + self.cross_attn(self.norm_cross(x), context=image)
        return x + self.mlp(self.norm_mlp(x))


class CapPaHead(nn.Module):
    """Text decoder for causal or parallel captioning (COLIPRI Sec. 4.2, big_vision CapPa)."""

    def __init__(
        self,
        vocab_size: int,
        width: int,
        depth: int,
        heads: int,
        image_dim: int,
        max_len: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.mask_token_id = vocab_size
        self.max_len = max_len
        self.token_embed = nn.Embedding(vocab_size + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, width))
        self.blocks = nn.ModuleList(CapPaBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.to_logits = nn.Linear(width, vocab_size)

    @staticmethod
    def attention_mask(length: int, causal: bool, device: torch.device | None = None) -> torch.Tensor:
        """Boolean (length, length) self-attention mask, True = may attend.

        Lower-triangular for causal captioning, all True for parallel captioning.
        """
        full = torch.ones(length, length, dtype=torch.bool, device=device)
        return torch.tril(full) if causal else full

    def hidden_states(
        self, input_ids: torch.Tensor, image_tokens: torch.Tensor, causal: bool
    ) -> torch.Tensor:
        """input_ids (B, L) with ids ≤ vocab_size; image_tokens (B, N, image_dim). → (B, L, width),
        after the final LayerNorm (``to_logits`` of it gives the logits)."""
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"Sequence length {length} exceeds max_len {self.max_len}")
        x = self.token_embed(input_ids) + self.pos_embed[:, :length]
        image = self.image_proj(image_tokens)
        mask = self.attention_mask(length, causal, device=input_ids.device)
        for block in self.blocks:
            x = block(x, image, mask)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor, causal: bool) -> torch.Tensor:
        """input_ids (B, L) with ids ≤ vocab_size; image_tokens (B, N, image_dim). → (B, L, vocab)."""
        return self.to_logits(self.hidden_states(input_ids, image_tokens, causal))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy over labels ≠ −100 (0 with a gradient path when none is)."""
        flat_logits = rearrange(logits, "b l v -> (b l) v")
        flat_labels = rearrange(labels, "b l -> (b l)")
        if not bool((flat_labels != IGNORE_INDEX).any()):
            return flat_logits.sum() * 0.0
        return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX)

    def caption_loss(
        self, image_tokens: torch.Tensor, targets: Mapping[str, torch.Tensor], causal: bool
    ) -> torch.Tensor:
        """Loss of one mode on a batch of ``datamodules.cappa_targets.stack_examples`` tensors.

        Causal: teacher forcing on ``input_ids`` with the causal mask. Parallel: the all-mask
        ``parallel_input_ids`` with full attention. Both predict the same ``labels``.
        Equal to ``loss(forward(...), labels)``, but the vocabulary projection (the largest
        matmul) runs on the labelled positions only, not on headers and padding.
        """
        input_ids = targets["input_ids"] if causal else targets["parallel_input_ids"]
        hidden = self.hidden_states(input_ids, image_tokens, causal=causal)
        labels = targets["labels"]
        labelled = labels != IGNORE_INDEX
        if not bool(labelled.any()):
            return hidden.sum() * 0.0
        return F.cross_entropy(self.to_logits(hidden[labelled]).float(), labels[labelled])

    @torch.no_grad()
    def generate_greedy(
        self,
        image_tokens: torch.Tensor,
        header_ids: torch.Tensor,
        num_slots: int,
        causal: bool,
        start_id: int = 0,
    ) -> torch.Tensor:
        """Greedy decoding of the ``num_slots`` content tokens → (B, num_slots).

        ``header_ids`` (B, H) or (H,): the header block (``CapPaExample.header_ids``).
        Causal: ``[start_id] + headers`` then one token at a time (argmax), recomputing the whole
        prefix each step (no KV cache: the sequences are short). ``start_id`` must be the
        builder's ``start_id``. Parallel: ``headers + mask * num_slots``, one pass, argmax.
        """
        batch = image_tokens.shape[0]
        if header_ids.ndim == 1:
            header_ids = header_ids.expand(batch, -1)
        header_ids = header_ids.to(image_tokens.device)
        if not causal:
            masks = header_ids.new_full((batch, num_slots), self.mask_token_id)
            hidden = self.hidden_states(torch.cat([header_ids, masks], dim=1), image_tokens, causal=False)
            return self.to_logits(hidden[:, header_ids.shape[1] :]).argmax(dim=-1)
        tokens = torch.cat([header_ids.new_full((batch, 1), start_id), header_ids], dim=1)
        for _ in range(num_slots):
            last = self.hidden_states(tokens, image_tokens, causal=True)[:, -1]
            next_token = self.to_logits(last).argmax(dim=-1)
            tokens = torch.cat([tokens, rearrange(next_token, "b -> b 1")], dim=1)
        return tokens[:, 1 + header_ids.shape[1] :]
