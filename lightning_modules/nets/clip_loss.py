"""Contrastive image–text loss (CLIP softmax InfoNCE or SigLIP sigmoid), DDP-aware.

Under ``torch.distributed`` (initialised, world size > 1) the embeddings of all ranks are
gathered *with gradients* and each rank computes the loss of its own rows against all columns
(OpenCLIP's "local loss"). Both losses are normalised so that the mean over ranks of the local
losses equals the single-process loss on the concatenated batch (equal local batch sizes):

- softmax: 0.5 * (mean_i CE(img_i -> all texts) + mean_i CE(txt_i -> all images)), means over the
  local rows. Averaging equal-size local means gives the global mean.
- sigmoid: -sum_{i local, j global} log σ(z_ij (scale·cos_ij + bias)) / B_local, z = +1 for the
  matching pair and -1 otherwise. Summing over ranks covers every (i, j) pair once, and dividing by
  B_local on each of the W ranks equals dividing by B_global = W·B_local.

The backward of the gather sums the gradient over ranks, so with DDP's gradient *averaging* the
parameter gradients equal those of the single-process loss as well.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the gradient summed over all ranks.

    Backward uses all_reduce (supported by every backend, gloo included) and keeps the own slice;
    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated in torch 2.14.
    Local sizes may differ between ranks.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        max_size = max(sizes)
        padded = tensor.contiguous()
        if padded.shape[0] < max_size:
            pad = padded.new_zeros((max_size - padded.shape[0], *padded.shape[1:]))
            padded = torch.cat([padded, pad])
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def _distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local_sizes(batch: int, device: torch.device, world: int) -> list[int]:
    local = torch.tensor([batch], device=device, dtype=torch.long)
    all_sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(all_sizes, local)
    return [int(s.item()) for s in all_sizes]


def gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` (dim 0) over all ranks, differentiably.

    Returns (gathered, offset) where offset is the index of this rank's first row in ``gathered``.
    ``sizes`` (every rank's row count) is exchanged when not given. Without an initialised process
    group (or with world size 1) returns (tensor, 0).
    """
    rank, world = _distributed_world()
    if world == 1:
        return tensor, 0
    if sizes is None:
        sizes = _local_sizes(tensor.shape[0], tensor.device, world)
    return _GatherWithGrad.apply(tensor, sizes), sum(sizes[:rank])


class ClipLoss(nn.Module):
    """CLIP (``kind="softmax"``) or SigLIP (``kind="sigmoid"``) loss on L2-normalised embeddings.

    ``logit_scale`` = log(1 / temperature), used as exp(min(logit_scale, log 100)). It is an
    ``nn.Parameter`` when ``learn_temperature`` and a buffer otherwise; the same holds for the
    sigmoid ``logit_bias``. ``init_temperature=None`` means 0.07 for softmax (CLIP) and 0.1 for
    sigmoid (SigLIP: scale 10, bias -10).
    """

    def __init__(
        self,
        kind: Literal["softmax", "sigmoid"] = "softmax",
        init_temperature: float | None = None,
        learn_temperature: bool = True,
        sigmoid_init_bias: float = -10.0,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"ClipLoss kind must be 'softmax' or 'sigmoid', got {kind!r}")
        if init_temperature is None:
            init_temperature = 0.07 if kind == "softmax" else 0.1
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.kind = kind
        self.gather = gather
        self.learn_temperature = learn_temperature
        scale = torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32)
        if learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        if kind == "sigmoid":
            bias = torch.tensor(float(sigmoid_init_bias), dtype=torch.float32)
            if learn_temperature:
                self.logit_bias = nn.Parameter(bias)
            else:
                self.register_buffer("logit_bias", bias)

    @property
    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to at most 100 (differentiable below the clamp)."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    @property
    def temperature(self) -> torch.Tensor:
        """1 / scale, detached: for logging."""
        return (1.0 / self.scale).detach()

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return F.normalize(x, dim=-1)

    def _logits(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        logits = self.scale * rows @ cols.T
        if self.kind == "sigmoid":
            logits = logits + self.logit_bias
        return logits

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Retrieval logits (N_images, N_texts): scale·cos (+ bias for sigmoid), as in training."""
        with torch.autocast(image_emb.device.type, enabled=False):
            return self._logits(self._normalise(image_emb), self._normalise(text_emb))

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """image_emb, text_emb: (B_local, C), row i of each is a pair. Returns the scalar loss."""
        if image_emb.shape[0] != text_emb.shape[0]:
            raise ValueError(f"Batch sizes differ: {image_emb.shape[0]} images vs {text_emb.shape[0]} texts")
        with torch.autocast(image_emb.device.type, enabled=False):  # logits in full precision
            return self._loss(self._normalise(image_emb), self._normalise(text_emb))

    def _loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        batch = image.shape[0]
        _, world = _distributed_world()
        if self.gather and world > 1:
            sizes = _local_sizes(batch, image.device, world)
            all_image, offset = gather_with_grad(image, sizes)
            all_text, _ = gather_with_grad(text, sizes)
        else:
            all_image, all_text, offset = image, text, 0

        logits_per_image = self._logits(image, all_text)  # (B_local, B_global)
        targets = torch.arange(batch, device=image.device) + offset
        if self.kind == "softmax":
            logits_per_text = self.scale * text @ all_image.T
            return 0.5 * (
                F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)
            )

        signs = -torch.ones_like(logits_per_image)
        signs[torch.arange(batch, device=image.device), targets] = 1.0
        return -F.logsigmoid(signs * logits_per_image).sum() / batch
