"""GreenRFM image encoder: torchvision's 3D ResNet-18 (``r3d_18``) with a 1-channel patchifying stem.

GreenRFM keeps the Kinetics-400 ``r3d_18`` but replaces its RGB stem convolution (3×7×7, stride
1×2×2) by a 1-channel ``Conv3d`` whose kernel equals its stride and has no padding: (2, 2, 2) for
GreenRFM, (4, 4, 4) for GreenRFM-Lite. The stem convolution is therefore trained from scratch,
while its BatchNorm and ReLU and all residual layers start from Kinetics weights. Volumes are
reduced to one 512-d vector by global average pooling (GAP), the pooling zero-shot inference uses.

Axes: torchvision video models take (B, C, T, H, W); our volumes are (B, 1, D, H, W), so the CT
depth (slice) axis D plays the role of time T, and H, W are the in-plane axes. The stem kernel is
isotropic, so the mapping only matters for the token grid, which is reported as (d, h, w).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torchvision.models.video import r3d_18

from lightning_modules.nets.image_encoder import ImageOutput

log = logging.getLogger(__name__)

STEM_CONV_KEY = "stem.0.weight"  # replaced by the 1-channel stem: never loaded from Kinetics
FEATURE_DIM = 512  # r3d_18 layer4 channels
MISSING_WEIGHTS_HINT = (
    "download torchvision's r3d_18 KINETICS400_V1 weights on a machine with internet "
    "and point model.image.weights at the file"
)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"stem must be an int or 3 ints, got {value!r}")
    return values  # type: ignore[return-value]


class R3DEncoder(nn.Module):
    """``r3d_18`` trunk under torchvision's module names (``stem``, ``layer1``..``layer4``).

    Keeping the names lets Kinetics state dicts load key for key and lets MONAI's Grad-CAM find the
    last convolutional block as ``target_layers="layer4"`` (the paper's Grad-CAM layer).
    """

    def __init__(self, stem: int | Sequence[int] = 2) -> None:
        super().__init__()
        stride = _triple(stem)
        net = r3d_18(weights=None)
        # Stem = Sequential(Conv3d, BatchNorm3d, ReLU): swap the conv only, keep BN + ReLU.
        net.stem[0] = nn.Conv3d(1, 64, kernel_size=stride, stride=stride, padding=0, bias=False)
        self.stem = net.stem
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Identity()  # no Kinetics classifier: the pooled 512-d feature is the output

    @property
    def proj_dim(self) -> int:
        """Width of ``pooled`` (and of every token): layer4's 512 channels."""
        return FEATURE_DIM

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Total (d, h, w) stride of layer4 w.r.t. the input: stem stride × the 2×2×2 of layers 2-4.

        Each token covers this many voxels (up to the ceil of odd sizes), so D·H·W / prod(patch_size)
        estimates the token count.
        """
        total = list(self.stem[0].stride)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            conv = layer[0].conv1[0]  # first block's first conv carries the layer's stride
            total = [t * s for t, s in zip(total, conv.stride, strict=True)]
        return tuple(total)  # type: ignore[return-value]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> layer4 feature map (B, 512, d, h, w); D is torchvision's T axis."""
        x = self.stem(images)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, images: torch.Tensor) -> ImageOutput:
        feature_map = self.feature_map(images)
        d, h, w = feature_map.shape[2:]
        tokens = rearrange(feature_map, "b c d h w -> b (d h w) c")
        pooled = self.fc(self.avgpool(feature_map).flatten(1))
        return ImageOutput(tokens=tokens, grid=(d, h, w), pooled=pooled)


def _unwrap_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (an r3d_18 checkpoint was expected)")
    return checkpoint


def load_kinetics_weights(encoder: R3DEncoder, path: str | Path) -> list[str]:
    """Load a local torchvision ``r3d_18`` Kinetics-400 state dict into ``encoder``; never downloads.

    Every tensor is loaded except the replaced stem conv (``stem.0.weight``: 3 input channels in
    the file, 1 here, and a different kernel) and the Kinetics classifier ``fc.*``. The file may be
    a plain state dict or a dict with a ``"state_dict"`` or ``"model"`` entry. Returns the loaded
    keys.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an ``r3d_18`` checkpoint (missing, unexpected or misshapen keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.image.weights={path} does not exist; {MISSING_WEIGHTS_HINT}")
    state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    state = {k: v for k, v in state.items() if k != STEM_CONV_KEY and not k.startswith("fc.")}

    expected = {k: v for k, v in encoder.state_dict().items() if k != STEM_CONV_KEY}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or misshapen:
        raise ValueError(
            f"{path} is not a torchvision r3d_18 checkpoint: missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {misshapen}"
        )
    encoder.load_state_dict(state, strict=False)
    log.info("Loaded %d r3d_18 tensors from %s (stem conv trained from scratch)", len(state), path)
    return sorted(state)


def build_r3d_encoder(stem: int | Sequence[int] = 2, weights: str | Path | None = None) -> R3DEncoder:
    """GreenRFM encoder (``stem=2``) or GreenRFM-Lite (``stem=4``), Kinetics-initialised when
    ``weights`` names a local ``r3d_18`` state dict file (random initialisation when None)."""
    encoder = R3DEncoder(stem)
    if weights is not None:
        load_kinetics_weights(encoder, weights)
    return encoder
