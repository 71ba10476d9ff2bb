"""MAE head for 3D ViT tokens: mask, encode the visible patches, decode, MSE on the masked patches.

He et al.'s masked autoencoder on the Primus encoder (COLIPRI Sec. 4.3):

1. :func:`~lightning_modules.nets.mae_masking.sample_mask` picks the masked patches
   (``ratio``, ``style``);
2. the encoder sees only the visible patches, at their true 3D RoPE positions
   (:func:`~lightning_modules.nets.primus_patch_drop.encode_visible`);
3. a light transformer decoder (``depth`` timm ``Block``s of width ``dim``) gets the visible tokens
   (projected to ``dim``) back in their places, a learned mask token everywhere else, and learned
   absolute positions, and predicts each patch's ``p_d * p_h * p_w * C`` voxels as a residual over
   the mean of the sample's visible voxels. The readout starts at zero, so an untrained decoder is
   exactly the mean predictor and every step of training is spent below it: a decoder that joins
   late in a decayed schedule (COLIPRI-CM/CRM's last 25 %) otherwise spends its few steps
   unlearning the noise of a random readout;
4. the loss is the voxel MSE averaged over the **masked** patches only; with ``norm_pix`` the
   target of each patch is standardised by its own mean and variance (He et al. Sec. 3).

The head does not own the encoder: ``forward`` takes the backbone, so the same Primus can serve
CLIP batches and MAE batches. Patches are flattened as ``(d h w)`` raster order, voxels inside a
patch as ``(pd ph pw c)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from dynamic_network_architectures.architectures.primus import Primus
from einops import rearrange
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from lightning_modules.nets.mae_masking import MASK_STYLES, PatchMask, sample_mask
from lightning_modules.nets.primus_patch_drop import encode_visible

NORM_PIX_EPS = 1e-6


def patchify(images: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, pd*ph*pw*C), patches in (d h w) raster order."""
    pd, ph, pw = patch
    return rearrange(images, "b c (d pd) (h ph) (w pw) -> b (d h w) (pd ph pw c)", pd=pd, ph=ph, pw=pw)


def unpatchify(
    patches: torch.Tensor, grid: Sequence[int], patch: Sequence[int], channels: int = 1
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, pd*ph*pw*C) -> (B, C, D, H, W)."""
    (d, h, w), (pd, ph, pw) = grid, patch
    return rearrange(
        patches,
        "b (d h w) (pd ph pw c) -> b c (d pd) (h ph) (w pw)",
        d=d,
        h=h,
        w=w,
        pd=pd,
        ph=ph,
        pw=pw,
        c=channels,
    )


def patch_targets(images: torch.Tensor, patch: Sequence[int], norm_pix: bool) -> torch.Tensor:
    """The regression targets (B, N, P): the patches, standardised per patch with ``norm_pix``."""
    target = patchify(images, patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS).sqrt()
    return target


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches of the per-patch voxel MSE; visible patches count for nothing.

    ``prediction``/``target`` (B, N, P), ``masked`` (B, N) bool.
    """
    per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)
    weights = masked.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)


def visible_mean(target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1): the mean of each sample's visible voxels (``target`` (B, N, P), ``masked`` (B, N))."""
    visible = (~masked).to(target.dtype)[..., None]
    mean = (target * visible).sum(dim=(1, 2)) / (visible.sum(dim=(1, 2)) * target.shape[-1]).clamp_min(1.0)
    return mean[:, None, None]


def mean_predictor_loss(target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The loss of the trivial reconstruction: every masked voxel predicted as the mean of the
    sample's visible voxels (the reference an MAE must beat, and the untrained head's output)."""
    return masked_mse(visible_mean(target, masked).expand_as(target), target, masked)


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar: MSE over the masked patches
    prediction: torch.Tensor  # (B, N, P) every patch's prediction (in target space)
    target: torch.Tensor  # (B, N, P)
    mask: PatchMask
    visible: torch.Tensor  # (B, N_keep, encoder_dim) the encoder tokens of the visible patches


class MAEDecoder(nn.Module):
    """Visible encoder tokens + learned mask tokens + learned positions -> per-patch voxels (the
    residual over the visible mean; the readout is zero-initialised)."""

    def __init__(
        self,
        encoder_dim: int,
        num_patches: int,
        patch_voxels: int,
        dim: int = 512,
        depth: int = 6,
        heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_voxels)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.predict.weight)
        nn.init.zeros_(self.predict.bias)

    def forward(self, visible: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
        """(B, N_keep, encoder_dim) tokens at ``keep_indices`` -> (B, N, patch_voxels)."""
        batch, num_patches = visible.shape[0], self.pos_embed.shape[1]
        tokens = self.embed(visible)
        x = self.mask_token.to(tokens.dtype).expand(batch, num_patches, -1).clone()
        x = x.scatter(1, keep_indices[..., None].expand(-1, -1, x.shape[-1]), tokens)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.predict(self.norm(x))


class MAEHead(nn.Module):
    """Masking + decoder + masked-patch MSE for a Primus backbone of a fixed input size."""

    def __init__(
        self,
        encoder_dim: int,
        grid: Sequence[int],
        patch_size: Sequence[int],
        in_channels: int = 1,
        ratio: float = 0.75,
        style: str = "random",
        dim: int = 512,
        depth: int = 6,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix: bool = False,
    ) -> None:
        super().__init__()
        if style not in MASK_STYLES:
            raise ValueError(f"Unknown mask style {style!r}; valid: {', '.join(MASK_STYLES)}")
        self.grid = tuple(int(g) for g in grid)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.in_channels = in_channels
        self.ratio = ratio
        self.style = style
        self.norm_pix = norm_pix
        num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        patch_voxels = self.patch_size[0] * self.patch_size[1] * self.patch_size[2] * in_channels
        self.decoder = MAEDecoder(encoder_dim, num_patches, patch_voxels, dim, depth, heads, mlp_ratio)

    def sample_mask(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> PatchMask:
        return sample_mask(batch, self.grid, self.ratio, self.style, generator=generator, device=device)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return patch_targets(images, self.patch_size, self.norm_pix)

    def forward(
        self,
        backbone: Primus,
        images: torch.Tensor,
        mask: PatchMask | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        """Mask ``images`` (B, C, D, H, W) (or use ``mask``), encode the visible patches with
        ``backbone``, reconstruct every patch and score the masked ones."""
        mask = mask if mask is not None else self.sample_mask(images.shape[0], images.device, generator)
        visible = encode_visible(backbone, images, mask.keep_indices)
        target = self.targets(images)
        prediction = self.decoder(visible, mask.keep_indices) + visible_mean(target, mask.masked)
        return MAEOutput(masked_mse(prediction, target, mask.masked), prediction, target, mask, visible)

    def reconstruction(self, images: torch.Tensor, output: MAEOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction) volumes like ``images``, for display: the masked input is
        ``images`` with masked patches set to the minimum; the reconstruction shows the visible
        patches as they were and the masked ones as predicted (de-standardised with ``norm_pix``,
        using each patch's true mean and variance, as He et al.'s figures do)."""
        patches = patchify(images, self.patch_size)
        prediction = output.prediction.to(patches.dtype)
        if self.norm_pix:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
            prediction = prediction * std + mean
        masked = output.mask.masked[..., None]
        floor = torch.full_like(patches, float(images.min()))
        channels = self.in_channels
        masked_input = unpatchify(torch.where(masked, floor, patches), self.grid, self.patch_size, channels)
        recon = unpatchify(torch.where(masked, prediction, patches), self.grid, self.patch_size, channels)
        return masked_input, recon
