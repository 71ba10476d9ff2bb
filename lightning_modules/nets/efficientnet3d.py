"""3D EfficientNet-B0 from MONAI as a feature-map encoder, and 2D -> 3D weight inflation.

Uniferum's vision encoder is a 3D EfficientNet-B0 with one input channel (1280-channel map at 1/32
of the input), initialised from 2D ImageNet weights by repeating every 2D kernel along depth
(Uniferum Sec. 3.6). MONAI's ``EfficientNetBN(spatial_dims=3)`` needs only torch (``timm_3d`` needs
torchvision builds that do not install beside our torch).

The 2D weights come from a local file (nothing is downloaded), ``.pth`` or ``.safetensors``: the
paper's timm ``tf_efficientnet_b0`` (ImageNet; TF "same" padding and batch-norm eps 1e-3, as
MONAI's EfficientNetBN; its names are mapped to MONAI's block by block), a state dict of MONAI's
2D ``EfficientNetBN("efficientnet-b0", spatial_dims=2)`` or of ``efficientnet_pytorch``
(``efficientnet-b0-355c32eb.pth``, the file MONAI's ``pretrained=True`` fetches; its keys lack
MONAI's stage index and are matched the way MONAI does).

The timm file, on a machine with internet (then copy it over)::

    python -c "import timm, torch; m = timm.create_model('tf_efficientnet_b0.in1k', pretrained=True);
    torch.save(m.state_dict(), 'tf_efficientnet_b0.pth')"

or ``model.safetensors`` of the Hugging Face repository ``timm/tf_efficientnet_b0.in1k``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from monai.networks.nets import EfficientNetBN
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

FEATURE_DIM = 1280
DOWNSAMPLE = 32
_STAGE_INDEX = re.compile(r"(.+)\.\d+(\.\d+\..+)")  # MONAI "_blocks.3.1.x" -> "_blocks.3.x" style

# timm's EfficientNet names -> MONAI's: the stem and head, the depthwise-separable blocks (no
# expansion: stage 0) and the inverted-residual blocks (every other stage).
_TIMM_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
_TIMM_SEPARABLE = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
_TIMM_INVERTED = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.([a-z_]+)$")
_MONAI_BLOCK = re.compile(r"_blocks\.(\d+)\.(\d+)\.")


class EfficientNet3DEncoder(nn.Module):
    """``forward(x: (B, 1, X, Y, Z)) -> (B, 1280, X/32, Y/32, Z/32)``, the map before global pooling.

    Every input side must be a multiple of 32 for the token grid to tile the input exactly.
    """

    downsample = DOWNSAMPLE
    out_channels = FEATURE_DIM

    def __init__(self, in_channels: int = 1, drop_connect: bool = True) -> None:
        super().__init__()
        net = EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=in_channels, num_classes=1
        )
        if not drop_connect:
            for block in net._blocks.modules():
                if hasattr(block, "drop_connect_rate"):
                    block.drop_connect_rate = 0.0
        # The classifier (pooling, dropout, fc) is not used; drop it from the state dict.
        net._fc = nn.Identity()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(images))))
        x = net._blocks(x)
        return net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))


def inflate_state_dict(
    state_2d: dict[str, torch.Tensor], target: dict[str, torch.Tensor], mode: str = "copy"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """2D EfficientNet weights -> the 3D ``target`` state dict's shapes.

    Every 2D kernel (out, in, kh, kw) becomes (out, in, kd, kh, kw) by repeating it ``kd`` times
    along depth: ``mode="copy"`` as the paper (a depth-constant input then gives ``kd`` times the 2D
    response; batch norm absorbs the scale), ``"mean"`` divides by ``kd`` (I3D). An RGB stem summed
    over its input channels feeds a 1-channel input. Other tensors are copied when shapes match.
    Returns the new state dict and the target keys left at their initial values.
    """
    if mode not in ("copy", "mean"):
        raise ValueError(f"inflation mode must be 'copy' or 'mean', not {mode!r}")
    out = dict(target)
    missing: list[str] = []
    for key, value in target.items():
        source = state_2d.get(key)
        if source is None:
            source = state_2d.get(_STAGE_INDEX.sub(r"\1\2", key))
        if source is None:
            missing.append(key)
            continue
        source = source.to(value.dtype)
        if value.ndim == 5 and source.ndim == 4:
            if source.shape[1] != value.shape[1] and value.shape[1] == 1:
                source = source.sum(dim=1, keepdim=True)  # RGB stem -> one channel
            depth = value.shape[2]
            inflated = source.unsqueeze(2).repeat(1, 1, depth, 1, 1)
            if mode == "mean":
                inflated = inflated / depth
            source = inflated
        if tuple(source.shape) != tuple(value.shape):
            missing.append(key)
            continue
        out[key] = source.clone()
    return out, missing


def is_timm_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return "conv_stem.weight" in state and "blocks.0.0.conv_dw.weight" in state


def timm_to_monai_names(state: dict[str, torch.Tensor], target_keys: list[str]) -> dict[str, torch.Tensor]:
    """A timm EfficientNet state dict under MONAI's names. Blocks are paired in order: timm's
    ``blocks.<stage>.<i>`` with MONAI's ``_blocks.<stage>.<running index>``; the classifier is dropped."""
    timm_blocks = sorted({m.groups()[:2] for k in state if (m := _TIMM_BLOCK.match(k))}, key=_as_ints)
    monai_blocks = sorted({m.groups() for k in target_keys if (m := _MONAI_BLOCK.match(k))}, key=_as_ints)
    if len(timm_blocks) != len(monai_blocks):
        raise ValueError(
            f"the timm state dict has {len(timm_blocks)} blocks, the 3D EfficientNet-B0 {len(monai_blocks)}: "
            "not a tf_efficientnet_b0 / efficientnet_b0 file"
        )
    block_name = {t: f"_blocks.{m[0]}.{m[1]}" for t, m in zip(timm_blocks, monai_blocks, strict=True)}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = _TIMM_BLOCK.match(key)
        if block is None:
            module, _, leaf = key.rpartition(".")
            if module in _TIMM_TOP:
                renamed[f"{_TIMM_TOP[module]}.{leaf}"] = value
            continue
        stage, index, module, leaf = block.groups()
        inverted = f"blocks.{stage}.{index}.conv_pwl.weight" in state
        names = _TIMM_INVERTED if inverted else _TIMM_SEPARABLE
        if module in names:
            renamed[f"{block_name[(stage, index)]}.{names[module]}.{leaf}"] = value
    return renamed


def _as_ints(pair: tuple[str, str]) -> tuple[int, int]:
    return int(pair[0]), int(pair[1])


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (plain tensors only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def load_inflated_weights(encoder: EfficientNet3DEncoder, path: str | Path, mode: str = "copy") -> list[str]:
    """Inflate the 2D EfficientNet-B0 state dict at ``path`` into ``encoder``; returns keys not set.
    A file that sets not even the stem is refused (a wrong file would train from random weights)."""
    state = read_state_dict(path)
    prefix = "net."
    target = {k[len(prefix) :]: v for k, v in encoder.state_dict().items()}
    if is_timm_state_dict(state):
        state = timm_to_monai_names(state, list(target))
    inflated, missing = inflate_state_dict(state, target, mode)
    if "_conv_stem.weight" in missing:
        raise ValueError(
            f"{path} holds no EfficientNet-B0 stem ('conv_stem.weight' of timm, '_conv_stem.weight' of "
            "MONAI / efficientnet_pytorch): not a 2D EfficientNet-B0 state dict"
        )
    encoder.load_state_dict({prefix + k: v for k, v in inflated.items()})
    weights = [k for k in missing if not k.endswith("num_batches_tracked")]
    if weights:
        log.warning(
            "2D EfficientNet weights %s: %d 3D tensors kept their initial values: %s",
            path,
            len(weights),
            weights[:8],
        )
    return weights
