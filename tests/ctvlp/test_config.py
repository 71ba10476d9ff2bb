"""Config composition, validation and the errors a user sees for typos."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import available_experiments, checkpoint_config, load_experiment


def test_colipri_c_has_the_paper_settings() -> None:
    cfg = load_experiment("colipri_c", overrides=["data.root=/data/ct-rate"])
    assert cfg.model.image.size == "M" and cfg.model.image.patch_size == 8
    assert cfg.model.image.use_abs_pos_embed is False
    assert cfg.data.crop_size == 160 and cfg.data.spacing == 2.0
    assert cfg.data.crop_field is None and list(cfg.data.hu_window) == [-1000, 1000]  # HU / 1000
    assert cfg.data.batch_size == 16
    assert cfg.optim.lr == pytest.approx(6e-4) and cfg.optim.warmup_steps == 6250
    assert cfg.optim.schedule == "poly" and cfg.trainer.max_steps == 125_000
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.text.sentence_shuffle is True and cfg.data.text.section == "findings"
    assert cfg.loss.kind == "softmax" and cfg.loss.init_temperature == pytest.approx(0.07)


def test_profile_then_overrides_win() -> None:
    cfg = load_experiment("colipri_c", profile="cpu_demo", overrides=["optim.lr=1e-3"])
    assert cfg.model.image.size == "tiny"  # from the profile
    assert cfg.optim.lr == pytest.approx(1e-3)  # override beats profile
    assert cfg.optim.warmup_steps == 30  # profile beats experiment


def test_profile_per_module_section_applies_to_that_module_only() -> None:
    green = load_experiment("greenrfm", "cpu_demo", ["trainer.val_check_interval=50"])
    assert green.trainer.max_steps == 300 and green.model.image.stem == 4  # per_module.greenrfm
    assert green.data.interpolation == "paper"  # make demo's cache
    assert green.greenrfm.lr_text == pytest.approx(1e-3) and green.data.crop_size == 48  # + profile
    assert green.trainer.val_check_interval == 50  # the command line still wins
    colipri = load_experiment("colipri_c", "cpu_demo")
    assert colipri.trainer.max_steps == 600 and "per_module" not in colipri


def test_profile_per_module_names_must_be_modules(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "base.yaml").write_text("name: base\nmodule: colipri\ndata:\n  root: /x\n", encoding="utf-8")
    (tmp_path / "profiles" / "small.yaml").write_text(
        "per_module:\n  greenfm:\n    seed: 1\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"per_module names \['greenfm'\], which are not modules"):
        load_experiment("base", "small", root=tmp_path)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("optim.lrr=1e-3", "optim.lr"),
        ("trainr.max_steps=3", "trainer"),
        ("data.crop_sise=64", "data.crop_size"),
        ("model.image.drop_pth=0.1", "model.image.drop_path"),
    ],
)
def test_typo_names_the_closest_key(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"Did you mean '{suggestion}'"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=[override])


def test_invalid_choice_is_reported() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'softmax'"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["loss.kind=softmx"])


def test_wrong_type_is_reported() -> None:
    with pytest.raises(ConfigError, match="crop_size"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["data.crop_size=big"])


def test_missing_data_root_explains_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"data\.root.*cpu_demo"):
        load_experiment("colipri_c")
    # colipri_crm's image-only source interpolates data.root: the same message, not a traceback.
    with pytest.raises(ConfigError, match=r"not set: 'data\.root'.*cpu_demo"):
        load_experiment("colipri_crm")


def test_unknown_experiment_and_profile() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'colipri_c'"):
        load_experiment("colipri_d")
    with pytest.raises(ConfigError, match="Did you mean 'cpu_demo'"):
        load_experiment("colipri_c", profile="cpu_dem")


def test_typo_in_a_yaml_file_is_caught(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "base.yaml").write_text("name: base\ndata:\n  root: /x\n", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text("defaults: [base]\noptim:\n  warmup_step: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="Did you mean 'optim.warmup_steps'"):
        load_experiment("bad", root=tmp_path)


def test_every_experiment_validates_with_cpu_demo() -> None:
    for name in available_experiments():
        # report generation needs its frozen encoder named (null: a random one)
        overrides = ["reportgen.encoder_ckpt=null"] if name.startswith("reportgen_") else []
        cfg = load_experiment(name, profile="cpu_demo", overrides=overrides)
        assert cfg.name


def test_cross_key_rules() -> None:
    with pytest.raises(ConfigError, match="warmup_steps=30 must be smaller than trainer.max_steps=20"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["trainer.max_steps=20"])
    with pytest.raises(ConfigError, match="multiple of model.image.patch_size"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["data.crop_size=50"])
    with pytest.raises(ConfigError, match="evaluation.final_tasks: Unknown evaluation task 'zeroshot_shrt'"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["evaluation.final_tasks=[zeroshot_shrt]"])
    with pytest.raises(ConfigError, match="decoder_lr_factor=0.0 must be positive"):
        load_experiment("colipri_crm", profile="cpu_demo", overrides=["objectives.mae.decoder_lr_factor=0"])
    with pytest.raises(ConfigError, match="must be a validation metric .* would leak it"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["trainer.best_metric=test/retrieval/R@5"])
    with pytest.raises(
        ConfigError, match="comes from the periodic evaluation, which does not pick checkpoints"
    ):
        load_experiment("mae", profile="cpu_demo", overrides=["trainer.best_metric=val/probe/AUROC"])
    with pytest.raises(ConfigError, match="trainer.best_mode=min needs trainer.best_metric"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["trainer.best_mode=min"])
    with pytest.raises(
        ConfigError, match="Invalid value 'minimum' for 'trainer.best_mode'. Did you mean 'min'"
    ):
        load_experiment(
            "colipri_c",
            profile="cpu_demo",
            overrides=["trainer.best_metric=val/retrieval/MnR", "trainer.best_mode=minimum"],
        )


def test_a_checkpoint_config_drops_keys_that_were_removed_and_checks_overrides_strictly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    current = OmegaConf.to_container(load_experiment("colipri_c", profile="cpu_demo"), resolve=True)
    saved = copy.deepcopy(current)
    saved["uniferum"]["fusion_lr_scale"] = 2.0  # keys a former ctvlp wrote
    saved["retired_section"] = {"x": 1}
    with caplog.at_level(logging.WARNING, logger="ctvlp.config.loader"):
        cfg = checkpoint_config(saved, ["optim.lr=1e-4"])
    assert "uniferum.fusion_lr_scale, retired_section" in caplog.text
    assert cfg.optim.lr == 1e-4 and "fusion_lr_scale" not in cfg.uniferum and "retired_section" not in cfg
    current["optim"]["lr"] = 1e-4
    assert OmegaConf.to_container(cfg, resolve=True) == current
    with pytest.raises(ConfigError, match="Unknown config key 'optim.lrr'"):
        checkpoint_config(saved, ["optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        checkpoint_config(saved, ["optim.lr"])


def test_greenrfm_has_the_paper_and_code_settings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ctvlp.config.loader"):
        cfg = load_experiment("greenrfm", None, ["data.root=/data/ct_rate"])
    assert "GreenRFM's r3d_18 trains from a random initialisation" in caplog.text  # no Kinetics file
    assert cfg.module == "greenrfm" and cfg.model.image.arch == "r3d_18" and cfg.model.image.stem == 2
    assert list(cfg.data.spacing) == [1.5, 1.5, 3.0] and list(cfg.data.hu_window) == [-1000, 200]
    assert cfg.data.interpolation == "colipri_inference"  # trilinear, no antialiasing
    assert cfg.evaluation.retrieval_direction == "report_to_image"  # each report ranks the volumes
    assert (
        load_experiment("colipri_c", None, ["data.root=/x"]).evaluation.retrieval_direction
        == "image_to_report"
    )
    assert list(cfg.data.crop_field) == [240, 240, 120] and list(cfg.data.crop_size) == [192, 192, 96]
    assert (cfg.greenrfm.lr_image, cfg.greenrfm.lr_text, cfg.greenrfm.lr_align) == (1e-4, 1e-5, 1e-5)
    assert cfg.greenrfm.cls_weight == 0.5 and cfg.greenrfm.stage1_fraction == 0.5
    assert load_experiment("greenrfm_lite", None, ["data.root=/x"]).model.image.stem == 4
    assert cfg.data.organ_masks and (cfg.greenrfm.seg_weight, cfg.greenrfm.seg_cell) == (1.0, 8)
    merlin = load_experiment("greenrfm_merlin", None, ["data.root=/x"])
    assert merlin.data.source == "merlin" and list(merlin.data.crop_size) == [224, 224, 144]
    assert not merlin.data.organ_masks and merlin.greenrfm.seg_weight == 0  # Merlin has no masks


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.image.weights=/nowhere/r3d_18.pth"],
            "model.image.weights=/nowhere/r3d_18.pth does not exist",
        ),
        (["model.image.arch=primus"], "GreenRFM trains r3d_18"),
        (["model.image.stem=3"], "2 \\(GreenRFM\\) or 4"),
        (
            ["data.organ_masks=false"],
            "greenrfm.seg_weight=1.0 needs the organ masks: set data.organ_masks=true",
        ),
        (["greenrfm.seg_cell=5"], "greenrfm.seg_cell=5 must divide every side of data.crop_size=48"),
    ],
)
def test_greenrfm_config_errors_come_before_any_work(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment("greenrfm", "cpu_demo", overrides)


def test_only_greenrfm_trains_r3d_18() -> None:
    with pytest.raises(ConfigError, match="every other module a Primus"):
        load_experiment("colipri_c", "cpu_demo", ["model.image.arch=r3d_18"])


def test_uniferum_trains_every_reconstruction_and_cpu_demo_shares_make_demos_cache() -> None:
    paper = load_experiment("uniferum", None, ["data.root=/x", "uniferum.vision_weights_2d=none"])
    assert paper.data.reconstructions == "all"  # Sec. 3.4.1: 46,168 training volumes
    assert load_experiment("colipri_c", None, ["data.root=/x"]).data.reconstructions == "one_per_acquisition"
    assert load_experiment("uniferum_seg", "cpu_demo").data.reconstructions == "one_per_acquisition"
    with pytest.raises(ConfigError, match="data.reconstructions"):
        load_experiment("colipri_c", None, ["data.root=/x", "data.reconstructions=every"])
