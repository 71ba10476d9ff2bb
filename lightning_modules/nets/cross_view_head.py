"""Cross-view contrastive head: RadFound's CC-MIM term beside the MAE (Liu et al., arXiv:2409.16183).

Two views of each study (``datamodules``: two random crops of one volume) are encoded for the MAE
anyway; this head turns each view's visible-patch tokens into one embedding and scores the views
against each other across the batch:

1. **Pooling**: the mean of the encoder tokens of the view's visible patches (the tokens the MAE
   forward already computed: no second encoder pass, and the embedding has to work from a
   quarter of the patches, as the reconstruction does);
2. **Projection**: batch normalisation of the pooled features, then a 2-layer MLP to ``proj_dim``
   (SimCLR's head; the BN as in SimCLR / MoCo v3 heads). The BN centres each feature over the
   batch: at initialisation the pooled tokens of similar scans are nearly parallel (the CT
   phantom's: cosine ~0.98) and without it the InfoNCE starts on a plateau at ln(batch). Under
   DDP it normalises over each rank's batch (Lightning's ``sync_batchnorm`` makes it global);
3. **Loss**: the symmetric InfoNCE of :class:`~lightning_modules.nets.clip_loss.ClipLoss` (softmax
   kind) on the L2-normalised embeddings: view A of study i must pick view B of study i among
   the batch's B views, and the other way round, ``0.5 * (CE(A->B) + CE(B->A))``. Under DDP the
   embeddings of every rank are the negatives.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.nets.clip_loss import ClipLoss


class CrossViewHead(nn.Module):
    """Visible tokens of two views (B, N_keep, C) each -> the InfoNCE between their embeddings."""

    def __init__(
        self, encoder_dim: int, proj_dim: int = 128, temperature: float = 0.2, learn_temperature: bool = False
    ) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.BatchNorm1d(encoder_dim),
            nn.Linear(encoder_dim, encoder_dim),
            nn.GELU(),
            nn.Linear(encoder_dim, proj_dim),
        )
        self.contrast = ClipLoss(
            kind="softmax", init_temperature=temperature, learn_temperature=learn_temperature
        )

    def embed(self, visible: torch.Tensor) -> torch.Tensor:
        """(B, N_keep, C) tokens of a view's visible patches -> (B, proj_dim), not normalised."""
        return self.project(visible.mean(dim=1))

    def forward(self, visible_a: torch.Tensor, visible_b: torch.Tensor) -> torch.Tensor:
        """The scalar InfoNCE; row i of both inputs is study i."""
        return self.contrast(self.embed(visible_a), self.embed(visible_b))
