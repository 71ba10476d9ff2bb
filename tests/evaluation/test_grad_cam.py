"""Grad-CAM of an image–text similarity (evaluation/grad_cam.py): range, shape, axis alignment and no
side effects on the encoder; the overlay renderer and the TensorBoard callback
(callbacks/grad_cam_images.py)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from callbacks.grad_cam_images import GradCamImagesCallback, finding_prompt, overlay_planes
from evaluation.grad_cam import layout_permutation, similarity_grad_cam
from lightning_modules.nets.greenrfm_encoders import GreenRFMImageEncoder
from lightning_modules.nets.r3d_encoder import FEATURE_DIM, build_r3d_encoder

SHAPE = (64, 48, 32)  # non-cubic (X, Y, Z): a swapped axis changes where the peak lands
STRIDE = 8
# A corner region of the input (X, Y, Z) voxels, aligned with the tiny trunk's 8-voxel cells.
REGION = (slice(48, 64), slice(0, 16), slice(0, 8))


class TinyTrunk(nn.Module):
    """A stand-in for ``R3DEncoder`` (same module names and ``feature_map`` in video layout) whose
    features are non-zero only where the input is: a non-negative 8×8×8 patchifying conv, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, FEATURE_DIM, kernel_size=STRIDE, stride=STRIDE, bias=False)
        with torch.no_grad():
            self.stem.weight.abs_()
        self.layer1, self.layer2, self.layer3 = nn.Identity(), nn.Identity(), nn.Identity()
        self.layer4 = nn.Sequential(nn.BatchNorm3d(FEATURE_DIM, affine=False), nn.ReLU())

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(images)))))


def _engineered() -> tuple[GreenRFMImageEncoder, torch.Tensor, torch.Tensor]:
    """GreenRFM's real image encoder (axis permutation included) on the tiny trunk, a text embedding
    every trunk channel agrees with, and an input that is zero except in ``REGION``: the similarity
    then depends on that region only."""
    torch.manual_seed(0)
    encoder = GreenRFMImageEncoder(TinyTrunk(), latent_dim=16)  # type: ignore[arg-type]
    with torch.no_grad():
        encoder.projection.weight.abs_()
    text = torch.rand(16) + 0.1  # projection^T text > 0: every channel counts for the prompt
    images = torch.zeros(1, 1, *SHAPE)
    images[(0, 0, *REGION)] = 1.0
    return encoder, text, images


def test_peak_lies_in_the_region_that_drives_the_similarity_on_a_non_cubic_input() -> None:
    encoder, text, images = _engineered()
    maps = similarity_grad_cam(encoder, text, images)
    assert maps.shape == (1, *SHAPE) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    peak = torch.unravel_index(maps[0].argmax(), SHAPE)
    assert all(s.start <= int(p) < s.stop for p, s in zip(peak, REGION, strict=True)), peak
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    inside[REGION] = True
    assert maps[0][inside].mean() > 5 * maps[0][~inside].mean()


def test_the_prompt_sets_the_sign_a_contrary_prompt_gives_no_evidence() -> None:
    encoder, text, images = _engineered()
    assert torch.equal(similarity_grad_cam(encoder, -text, images), torch.zeros(1, *SHAPE))


def test_the_layout_must_match_the_layer_a_wrong_one_misplaces_the_peak() -> None:
    """The same encoder explained as if its layer saw (x, y, z): the peak leaves the region, which is
    what the default layout (and the test above) guard against."""
    encoder, text, images = _engineered()
    maps = similarity_grad_cam(encoder, text, images, layer_layout="xyz")
    peak = torch.unravel_index(maps[0].argmax(), SHAPE)
    assert not all(s.start <= int(p) < s.stop for p, s in zip(peak, REGION, strict=True))


def test_r3d_encoder_batch_range_shape_and_no_side_effects() -> None:
    torch.manual_seed(0)
    encoder = GreenRFMImageEncoder(build_r3d_encoder(4), latent_dim=16)
    encoder.train()
    encoder.trunk.layer1.eval()  # a mixed state must come back as it was
    encoder.trunk.stem.requires_grad_(False)
    modes = {name: m.training for name, m in encoder.named_modules()}
    flags = {name: p.requires_grad for name, p in encoder.named_parameters()}
    running_mean = encoder.trunk.layer4[0].conv1[1].running_mean.clone()
    images = torch.rand(2, 1, *SHAPE) * 2 - 1
    text = torch.randn(2, 16)  # one prompt per volume
    with torch.inference_mode():  # as in a validation hook
        maps = similarity_grad_cam(encoder, text, images)
    assert maps.shape == (2, *SHAPE)
    assert maps.min() >= 0 and maps.max() <= 1
    assert {name: m.training for name, m in encoder.named_modules()} == modes
    assert {name: p.requires_grad for name, p in encoder.named_parameters()} == flags
    assert all(p.grad is None for p in encoder.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in encoder.modules())
    encoder.trunk.layer4.register_backward_hook(lambda *_: None)  # MONAI's full hook is gone, too
    assert torch.equal(encoder.trunk.layer4[0].conv1[1].running_mean, running_mean)  # eval-mode BN


def test_bad_layer_and_layout_are_named() -> None:
    encoder, text, images = _engineered()
    with pytest.raises(ValueError, match="trunk.layer5"):
        similarity_grad_cam(encoder, text, images, target_layer="trunk.layer5")
    with pytest.raises(ValueError, match="layer_layout"):
        layout_permutation("zyz")


# ----------------------------------------------------------------- rendering and the callback
def test_overlay_planes_pass_through_the_peak_in_the_preview_orientation() -> None:
    """One hot voxel: each plane is coloured at exactly one pixel, where ``orthogonal_slices``'
    radiological display puts that voxel (x and y flipped in axial; z up in coronal and sagittal)."""
    x0, y0, z0 = 50, 10, 3
    volume = torch.zeros(SHAPE)
    heat = torch.zeros(SHAPE)
    heat[x0, y0, z0] = 1.0
    planes = overlay_planes(volume, heat)
    X, Y, Z = SHAPE
    expected = {
        "axial": ((3, Y, X), (Y - 1 - y0, X - 1 - x0)),
        "coronal": ((3, Z, X), (Z - 1 - z0, X - 1 - x0)),
        "sagittal": ((3, Z, Y), (Z - 1 - z0, y0)),
    }
    for view, (shape, pixel) in expected.items():
        image = planes[view]
        assert image.shape == shape and image.min() >= 0 and image.max() <= 1
        coloured = (image - 0.5).abs().sum(0) > 1e-6  # grey 0.5 elsewhere (volume 0 -> 0.5)
        assert coloured.nonzero().tolist() == [list(pixel)], view


def test_finding_prompt_takes_the_first_positive_label_else_the_first() -> None:
    names = ["Pleural effusion", "Emphysema"]
    assert finding_prompt(torch.tensor([math.nan, 1.0]), names) == "There is emphysema."
    assert finding_prompt(torch.tensor([0.0, math.nan]), names) == "There is pleural effusion."


class _Explainer:
    """A module as the callback sees it (the Protocol): ``label_names`` and ``grad_cam``."""

    label_names = ["Pleural effusion", "Emphysema"]
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.encoder, self.text, _ = _engineered()
        self.prompts: list[str] = []

    def grad_cam(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        self.prompts.append(prompt)
        return similarity_grad_cam(self.encoder, self.text, images)


def test_callback_logs_three_planes_and_the_prompt_per_volume(tmp_path: Path) -> None:
    _, _, images = _engineered()
    samples = [
        {"image": images[0], "image_id": f"vol{i}", "labels": torch.tensor(labels)}
        for i, labels in enumerate([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    ]
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = SimpleNamespace(
        logger=logger,
        sanity_checking=False,
        is_global_zero=True,
        global_step=7,
        datamodule=SimpleNamespace(datasets={"val": samples}),
    )
    module = _Explainer()
    with torch.inference_mode():  # Lightning's validation hooks run under inference mode
        GradCamImagesCallback(num_volumes=2).on_validation_end(trainer, module)  # type: ignore[arg-type]
    logger.experiment.flush()
    assert module.prompts == ["There is emphysema.", "There is pleural effusion."]
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == sorted(
        f"gradcam/{i}_vol{i}/{view}" for i in range(2) for view in ("axial", "coronal", "sagittal")
    )
    assert events.Images("gradcam/0_vol0/axial")[0].step == 7
