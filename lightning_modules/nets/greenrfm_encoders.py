"""GreenRFM's two encoders into one shared, un-normalised embedding space, and its light
coarse-segmentation decoder.

- :class:`GreenRFMImageEncoder`: the ``r3d_18`` trunk (``r3d_encoder``), global average pooling to
  512, then a bias-free ``Linear(512, latent)``. It returns an ``ImageOutput`` like every ctvlp
  image encoder, so ``ctvlp eval`` (retrieval, zero-shot, probes) reads it unchanged: ``pooled`` is
  the projected embedding the similarity uses, ``tokens`` the trunk's layer4 features.
- :class:`ClsTextEncoder`: a Hugging Face text encoder's [CLS] state (CXR-BERT in the paper), a
  bias-free ``Linear(hidden, latent)`` projection, and the stage-1 classification ``head`` on [CLS]
  (the paper: "a classification head attached to the [CLS] token embedding").

The projections have no bias, so a zero feature maps to the origin and the dot product keeps the
feature magnitude as confidence (paper Eq. 2). The classifier shared by both embeddings lives in
the recipe (``lightning_modules/greenrfm.py``).

Axes: ctvlp volumes are (B, 1, X, Y, Z) in RAS order; the authors feed r3d_18 (B, 1, D, H, W) =
(slices, rows, columns), so the image encoder permutes to (Z, Y, X) before the trunk (the Kinetics
kernels then see depth where they saw time) and permutes the feature map back, so ``tokens`` and
``grid`` follow ctvlp's (x, y, z) order like every other encoder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lightning_modules.nets.image_encoder import ImageOutput
from lightning_modules.nets.r3d_encoder import FEATURE_DIM, R3DEncoder
from lightning_modules.nets.text_encoder import eval_mode, load_text_backbone


def to_video_layout(images: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) <-> (B, C, Z, Y, X): its own inverse."""
    return images.permute(0, 1, 4, 3, 2)


class GreenRFMImageEncoder(nn.Module):
    def __init__(self, trunk: R3DEncoder, latent_dim: int = 768) -> None:
        super().__init__()
        self.trunk = trunk
        self.projection = nn.Linear(FEATURE_DIM, latent_dim, bias=False)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Voxels per token along (x, y, z)."""
        return tuple(reversed(self.trunk.patch_size))  # type: ignore[return-value]

    @property
    def proj_dim(self) -> int:
        """Width of the tokens (the trunk's 512; ``pooled`` has the latent width)."""
        return FEATURE_DIM

    @property
    def latent_dim(self) -> int:
        return int(self.projection.out_features)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) -> layer4 features (B, 512, x, y, z); Grad-CAM's layer is ``trunk.layer4``."""
        return to_video_layout(self.trunk.feature_map(to_video_layout(images)))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, 512, x, y, z) -> (B, latent): global average pooling, then the projection."""
        return self.projection(feature_map.mean(dim=(2, 3, 4)))

    def forward(self, images: torch.Tensor) -> ImageOutput:
        feature_map = self.feature_map(images)
        x, y, z = feature_map.shape[2:]
        tokens = rearrange(feature_map, "b c x y z -> b (x y z) c")
        return ImageOutput(tokens=tokens, grid=(x, y, z), pooled=self.pool(feature_map))


class ClsTextEncoder(nn.Module):
    """[CLS] of a local Hugging Face encoder -> bias-free projection; ``head`` scores [CLS] in stage 1.

    ``freeze_backbone`` (``model.text.freeze``; the CPU profile) keeps the backbone fixed, under
    ``no_grad`` and in eval mode: the head and the projection still train. A frozen backbone maps
    a token sequence to the same [CLS] every time, so those states are memoised per sequence
    (least recently used first out, ``memo_size`` of them): after the first epoch the text side
    costs two linear layers instead of a BERT forward per report. A new sequence is encoded alone,
    without padding, so its state is a pure function of its tokens (a resumed run sees the same
    states as an uninterrupted one); it can differ from a padded batch's in the last float bits.
    """

    def __init__(
        self,
        name_or_path: str | None,
        num_classes: int,
        latent_dim: int = 768,
        freeze_backbone: bool = False,
        memo_size: int = 65536,
    ) -> None:
        super().__init__()
        self.backbone, self.model_path = load_text_backbone(name_or_path)
        self.backbone.train(self.training)
        self.hidden_dim = int(self.backbone.config.hidden_size)
        self.projection = nn.Linear(self.hidden_dim, latent_dim, bias=False)
        self.head = nn.Linear(self.hidden_dim, num_classes)
        self.freeze_backbone = bool(freeze_backbone)
        self.memo_size = int(memo_size)
        self._memo: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)

    def _backbone_cls(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    def cls(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden) [CLS] states."""
        if not self.freeze_backbone:
            return self._backbone_cls(input_ids, attention_mask)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        sequences = [ids[row.bool()] for ids, row in zip(input_ids, mask, strict=True)]
        keys = [tuple(sequence.tolist()) for sequence in sequences]
        with torch.no_grad(), eval_mode(self.backbone):
            for sequence, key in zip(sequences, keys, strict=True):
                if key not in self._memo:  # alone and unpadded: a pure function of its tokens
                    self._memo[key] = self._backbone_cls(sequence[None], None)[0]
        out = torch.stack([self._memo[key] for key in keys])
        for key in keys:
            self._memo.move_to_end(key)
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._memo.clear()  # new weights: memoised states are stale
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> ClsTextEncoder:
        self._memo.clear()  # moved or cast: memoised states are on the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent) projected [CLS], not normalised."""
        return self.projection(self.cls(input_ids, attention_mask))


class CoarseSegDecoder(nn.Module):
    """Lightweight decoder: layer4 features -> coarse organ logits, for the paper's optional L_seg.

    The paper only says "we attach a lightweight decoder to predict coarse anatomical segmentation
    masks ... optimized via Cross-Entropy loss" and the public code has none, so this is ours: two
    1×1×1 convolutions (in_channels -> hidden -> num_classes) at the feature resolution, then
    trilinear upsampling to the requested size. It is deliberately weak, so the segmentation signal
    shapes the encoder's features instead of being solved by the decoder.
    """

    def __init__(self, num_classes: int, in_channels: int = FEATURE_DIM, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, num_classes, kernel_size=1),
        )

    def forward(self, feature_map: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """(B, in_channels, d, h, w) -> (B, num_classes, *size) logits (feature resolution if None)."""
        logits = self.net(feature_map)
        if size is None or tuple(size) == tuple(logits.shape[2:]):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="trilinear", align_corners=False)
