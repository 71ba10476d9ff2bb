"""Small phantoms of the Merlin, RAD-ChestCT, image-only and CT-RATE layouts, written once per session
by the real phantom writers and preprocessed through the real CLI."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import pytest

from ctvlp.commands import preprocess as preprocess_command
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate
from datamodules.phantom.image_only_writer import write_phantom_image_only
from datamodules.phantom.rad_chestct_writer import write_phantom_rad_chestct

SPACING = 6.0
RAD_N = 5
RAD_SCALE = 0.2
IMAGE_ONLY_PATIENTS = 2
CT_RATE_N = 16


def _run_preprocess(source: str, root: Path, cache_dir: Path, *spacings: float) -> None:
    """``ctvlp preprocess --source <source> --root <root> --spacing ...`` through the real parser."""
    parser = argparse.ArgumentParser()
    preprocess_command.add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["preprocess", "--source", source, "--root", str(root), "--cache-dir", str(cache_dir)]
    for spacing in spacings or (SPACING,):
        argv += ["--spacing", str(spacing)]
    # One process: starting worker processes costs more than these small volumes do.
    args = parser.parse_args([*argv, "--workers", "1", "--no-progress"])
    assert args.handler(args) == 0


@pytest.fixture(scope="session")
def rad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "rad_chestct"
    write_phantom_rad_chestct(root, RAD_N, seed=0, scale=RAD_SCALE, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def image_only_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "nlst"
    write_phantom_image_only(root, IMAGE_ONLY_PATIENTS, seed=0, n_dicom=1, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def small_ct_rate_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "ct_rate"
    write_phantom_ct_rate(root, CT_RATE_N, seed=1, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def sources_cache_dir(
    tmp_path_factory: pytest.TempPathFactory,
    merlin_root: Path,
    rad_root: Path,
    image_only_root: Path,
    small_ct_rate_root: Path,
) -> Path:
    """One cache folder holding all four sources at SPACING mm (``paper`` interpolation)."""
    cache_dir = tmp_path_factory.mktemp("sources_cache")
    for source, root in (
        ("merlin", merlin_root),
        ("rad_chestct", rad_root),
        ("image_only", image_only_root),
        ("ct_rate", small_ct_rate_root),
    ):
        _run_preprocess(source, root, cache_dir)
    return cache_dir


def _data_config(cache_dir: Path, **overrides: object):
    """A validated ``data`` config section (the schema's defaults, test-sized, plus ``overrides``)."""
    from omegaconf import OmegaConf

    from ctvlp.config.schema import DataConfig

    base = {
        "cache_dir": str(cache_dir),
        "spacing": SPACING,
        "crop_size": 32,
        "batch_size": 4,
        "num_workers": 0,
        "val_patients": 1,
        "preprocess_workers": 1,
        "text": {"shorten_p": 0.0},
    }
    return OmegaConf.merge(OmegaConf.structured(DataConfig), base, overrides)


@functools.cache
def _tokenizer():
    from lightning_modules.nets.text_encoder import load_tokenizer

    return load_tokenizer("minilm")


def _datamodule(cache_dir: Path, **overrides: object):
    """A set-up CTDataModule over the given data config (MiniLM tokenizer, max length 64)."""
    from datamodules.datamodule import CTDataModule

    module = CTDataModule(_data_config(cache_dir, **overrides), _tokenizer(), 64, seed=0)
    module.prepare_data()
    module.setup("fit")
    return module


# Helpers as fixtures (the test folders are not packages, so test modules cannot import conftest).
@pytest.fixture(scope="session")
def run_preprocess():
    return _run_preprocess


@pytest.fixture(scope="session")
def data_config():
    return _data_config


@pytest.fixture(scope="session")
def make_datamodule():
    return _datamodule
