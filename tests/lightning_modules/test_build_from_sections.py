"""Every LightningModule builds from a few config sections, without an experiment file, and says
what it adds to the trainer (its configure_callbacks) and what ctvlp eval can measure it by."""

from __future__ import annotations

import pytest
import torch

from callbacks.evaluation import EvaluationCallback
from callbacks.mae_reconstruction import MAEReconstructionCallback
from callbacks.report_samples import ReportSamplesCallback
from ctvlp.config.errors import ConfigError
from lightning_modules.cappa import CapPaModule
from lightning_modules.colipri import ColipriModule
from lightning_modules.mae import MAEModule
from lightning_modules.registry import module_class
from lightning_modules.uniferum import UniferumModule

TINY = {
    "data": {"crop_size": 32},
    "model": {"image": {"size": "tiny"}, "text": {"max_length": 64}},
    "evaluation": {"every_n_steps": 10, "callback_tasks": ["probe"]},
}


def _types(module) -> list[type]:
    return [type(callback) for callback in module.configure_callbacks()]


def test_colipri_builds_from_sections_and_adds_callbacks_for_its_objectives() -> None:
    clip = ColipriModule.from_sections(**TINY)
    assert clip.cfg.module == "colipri" and clip.cfg.data.crop_size == 32
    assert clip.encode_image(torch.zeros(1, 1, 32, 32, 32)).shape == (1, clip.cfg.model.proj_dim)
    assert _types(clip) == [EvaluationCallback]
    crm = ColipriModule.from_sections(
        **TINY,
        objectives={"rrg": {"enabled": True, "depth": 1}, "mae": {"enabled": True, "decoder_depth": 1}},
    )
    assert _types(crm) == [EvaluationCallback, ReportSamplesCallback, MAEReconstructionCallback]
    assert ColipriModule.embeds_text() and "retrieval" in ColipriModule.evaluation_tasks


def test_image_only_modules_are_probed_and_show_what_they_learn() -> None:
    cappa = CapPaModule.from_sections(**TINY, module="cappa", objectives={"rrg": {"depth": 1}})
    mae = MAEModule.from_sections(**TINY, module="mae", objectives={"mae": {"decoder_depth": 1}})
    assert _types(cappa) == [EvaluationCallback, ReportSamplesCallback]
    assert _types(mae) == [EvaluationCallback, MAEReconstructionCallback]
    assert CapPaModule.evaluation_tasks == MAEModule.evaluation_tasks == ("probe",)
    assert not MAEModule.embeds_text()
    # Retrieval needs report embeddings: asking an image-only module for it is a config error.
    with pytest.raises(ConfigError, match="'mae' module has no text encoder"):
        MAEModule.from_sections(
            **{**TINY, "evaluation": {"every_n_steps": 10}}, module="mae"
        ).configure_callbacks()


def test_uniferum_has_no_image_encoder_evaluation() -> None:
    uniferum = UniferumModule.from_sections(
        module="uniferum",
        model={"image": {"size": "tiny"}},
        uniferum={"input_shape": [32, 32, 32], "vision": "primus", "primus_patch": 16, "u": 2},
    )
    assert UniferumModule.evaluation_tasks == () and uniferum.configure_callbacks() == []


def test_former_module_names_still_resolve() -> None:
    assert module_class("contrastive") is ColipriModule
    assert module_class("seg_conditioned") is UniferumModule
    assert ColipriModule.from_sections(**TINY, module="contrastive").cfg.module == "colipri"
    with pytest.raises(ConfigError, match="Did you mean 'colipri'"):
        module_class("colipry")
    with pytest.raises(ConfigError, match="Unknown config key 'model.imag'"):
        ColipriModule.from_sections(model={"imag": {}})
