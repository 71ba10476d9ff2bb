"""Grad-CAM heat maps of an image–text similarity (GreenRFM paper, Fig. 5), through MONAI's GradCAM.

**Target.** The score explained is the similarity the model ranks with: the raw dot product
``image_encoder(images).pooled · text_embedding`` (GreenRFM: un-normalised embeddings, no
temperature), e.g. with the embedding of the prompt "There is pleural effusion.". A small wrapper
turns it into a (B, 1) "logit" and MONAI's :class:`~monai.visualize.GradCAM` explains class 0.

**Layer.** ``trunk.layer4`` by default: the last convolutional block of the ``r3d_18`` trunk, the
layer of the paper's figure (the last layer that still has a spatial grid, so the coarsest but most
semantic map). Any named module of the encoder may be given instead.

**Map.** Grad-CAM: ``ReLU(Σ_c α_c A_c)`` with ``α_c`` the spatial mean of ∂score/∂A_c over the layer's
grid (MONAI), upsampled trilinearly to the input grid (``align_corners=False``, so a feature cell
covers the voxels of its receptive-field centre), then scaled per volume to [0, 1] by its own
minimum and maximum (1 = the most positive evidence for the prompt in that volume; values are not
comparable across volumes or prompts). A volume without positive evidence (the map is 0 everywhere)
stays all zeros. MONAI's default post-processing maps (min, max) to (1, 0), i.e. it flips the map, so
it is replaced here.

**Axes.** MONAI upsamples to the spatial size of the wrapper's *input*, while the target layer may
see the volume in another axis order: ctvlp volumes are (B, 1, X, Y, Z), but GreenRFM's encoder
permutes them to torchvision's video layout (B, 1, Z, Y, X) before the trunk. ``layer_layout`` names
the order in which the target layer sees the input's x, y and z axes (``"zyx"`` for GreenRFM, ``"xyz"``
for an encoder that keeps ctvlp's order); the wrapper is fed the images in that order (and permutes
them back before calling the encoder), so the map MONAI upsamples lies on the right grid, and it is
permuted back to (X, Y, Z) on return.

**Side effects: none.** MONAI switches the model to eval mode (BatchNorm with running statistics,
which is what the map should explain) and back to train mode afterwards, registers hooks it never
removes, sets ``inplace=False`` on the target layer, zeroes gradients and accumulates new ones. Here
the train/eval flag of every submodule, every parameter's ``requires_grad`` and ``.grad``, the
target's ``inplace`` and the hook dictionaries are restored after the call. The parameters are frozen
during the call and the gradient flows from a copy of the input instead, so no parameter gradient
is ever written. The call works inside ``torch.no_grad`` / ``torch.inference_mode`` (a validation
hook): it re-enables autograd for itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import ModelWithHooks
from torch import nn

DEFAULT_TARGET_LAYER = "trunk.layer4"
VIDEO_LAYOUT = "zyx"  # torchvision's (T, H, W) = (Z, Y, X) of a ctvlp (X, Y, Z) volume
_AXES = "xyz"
_WRAPPED = "encoder"  # the encoder's attribute name inside the wrapper, so MONAI's layer is "encoder.<layer>"


def layout_permutation(layout: str) -> tuple[int, ...]:
    """Spatial permutation of a (B, C, X, Y, Z) tensor into ``layout`` (e.g. ``"zyx"`` -> (4, 3, 2))."""
    if sorted(layout) != sorted(_AXES):
        raise ValueError(f"layer_layout must order the letters x, y, z (e.g. 'zyx'), not {layout!r}")
    return tuple(2 + _AXES.index(axis) for axis in layout)


def _inverse(dims: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial permutation undoing ``dims`` (both act on dims 2..4)."""
    spatial = [d - 2 for d in dims]
    return tuple(2 + spatial.index(i) for i in range(len(spatial)))


class _ContiguousGradHooks(ModelWithHooks):
    """MONAI's hooks, storing the layer's output gradient contiguous: GradCAM reads it with ``.view``,
    which fails when the encoder permutes the layer's output (GreenRFM's ``to_video_layout``)."""

    def backward_hook(self, name: str) -> Callable[..., None]:
        def _hook(_module: nn.Module, _grad_input: object, grad_output: tuple[torch.Tensor, ...]) -> None:
            self.gradients[name] = grad_output[0].contiguous()

        return _hook


class _SimilarityLogit(nn.Module):
    """(B, 1, *layer layout) images -> (B, 1) dot products ``pooled · text``; the model MONAI sees."""

    def __init__(self, encoder: nn.Module, text_embedding: torch.Tensor, to_encoder: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = encoder  # attribute name = _WRAPPED
        self.text = text_embedding
        self.to_encoder = to_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.encoder(images.permute(0, 1, *self.to_encoder))
        pooled = output.pooled if hasattr(output, "pooled") else output
        return (pooled.float() * self.text).sum(dim=-1, keepdim=True)


def normalise_per_volume(maps: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) maps scaled to [0, 1] per volume by their own min and max; a flat map -> zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    span = flat.max(dim=1).values.view(-1, *[1] * (maps.dim() - 1)) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - low) / safe, torch.zeros_like(maps))


@contextmanager
def _preserved_state(encoder: nn.Module) -> Iterator[None]:
    """Restores what MONAI's GradCAM (and the backward pass) change on ``encoder``; freezes its
    parameters meanwhile, so no parameter gradient is written."""
    modules = list(encoder.modules())
    parameters = list(encoder.parameters())
    training = [m.training for m in modules]
    requires_grad = [p.requires_grad for p in parameters]
    grads = [p.grad for p in parameters]
    inplace = {m: m.inplace for m in modules if isinstance(getattr(m, "inplace", None), bool)}
    forward_hooks = [set(m._forward_hooks) for m in modules]
    backward_hooks = [set(m._backward_hooks) for m in modules]
    full_backward = [m._is_full_backward_hook for m in modules]
    try:
        encoder.requires_grad_(False)
        yield
    finally:
        for module, mode, fwd, bwd, full in zip(
            modules, training, forward_hooks, backward_hooks, full_backward, strict=True
        ):
            module.training = mode
            for key in set(module._forward_hooks) - fwd:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
            for key in set(module._backward_hooks) - bwd:
                del module._backward_hooks[key]
            module._is_full_backward_hook = full
        for parameter, flag, grad in zip(parameters, requires_grad, grads, strict=True):
            parameter.requires_grad_(flag)
            parameter.grad = grad
        for module, flag in inplace.items():
            module.inplace = flag


def similarity_grad_cam(
    image_encoder: nn.Module,
    text_embedding: torch.Tensor,
    images: torch.Tensor,
    target_layer: str = DEFAULT_TARGET_LAYER,
    layer_layout: str = VIDEO_LAYOUT,
) -> torch.Tensor:
    """Grad-CAM of ``image_encoder(images).pooled · text_embedding`` at ``target_layer``.

    Args:
        image_encoder: maps (B, 1, X, Y, Z) volumes to an output with ``.pooled`` (B, D) (an
            ``ImageOutput``) or to a (B, D) tensor. Its modes, flags, gradients and hooks are left as
            they were.
        text_embedding: (D,) or (1, D) for one prompt, or (B, D) for one prompt per volume; the
            projected embedding the similarity uses (detached here).
        images: (B, 1, X, Y, Z) model inputs (ctvlp: HU mapped to [-1, 1], RAS+).
        target_layer: a module name of ``image_encoder`` (``named_modules``); GreenRFM: ``trunk.layer4``.
        layer_layout: the order in which ``target_layer`` sees the input's x, y, z axes: ``"zyx"``
            (GreenRFM's video layout, the default) or ``"xyz"`` (no permutation inside the encoder).

    Returns:
        (B, X, Y, Z) float32 maps in [0, 1] on the input's voxel grid and device (module docstring:
        ReLU'd Grad-CAM, trilinear upsampling, per-volume min-max scaling).
    """
    if images.dim() != 5 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, X, Y, Z), got {tuple(images.shape)}")
    names = {name for name, _ in image_encoder.named_modules()}
    if target_layer not in names:
        candidates = sorted(n for n in names if n.count(".") <= 1 and n)[:12]
        raise ValueError(f"{type(image_encoder).__name__} has no module {target_layer!r}; e.g. {candidates}")
    to_layer = layout_permutation(layer_layout)
    to_encoder = _inverse(to_layer)
    with _preserved_state(image_encoder), torch.inference_mode(False), torch.enable_grad():
        text = text_embedding.detach().clone().float().to(images.device)
        text = text.reshape(1, -1) if text.dim() == 1 else text
        if text.shape[0] not in (1, images.shape[0]):
            raise ValueError(
                f"text_embedding must be (D,), (1, D) or (B, D), got {tuple(text_embedding.shape)}"
            )
        inputs = images.detach().clone().permute(0, 1, *to_layer).contiguous().requires_grad_(True)
        wrapper = _SimilarityLogit(image_encoder, text, to_encoder)
        layer = f"{_WRAPPED}.{target_layer}"
        hooked = _ContiguousGradHooks(wrapper, layer, register_forward=True, register_backward=True)
        cam = GradCAM(hooked, target_layers=layer, postprocessing=normalise_per_volume)
        maps = cam(inputs, class_idx=0)  # (B, 1, *layer layout), upsampled to the permuted input
    return maps.detach().permute(0, 1, *to_encoder)[:, 0].float().contiguous()
