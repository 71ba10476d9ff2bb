"""GreenRFM-style preprocessing: an anisotropic cache (spacing (x, y, z)), non-cubic crops, the crop
field and the HU window, on the small phantom CT-RATE."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctvlp.commands import preprocess as preprocess_command
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from datamodules.cache import (
    BUILD_NAME,
    MASK_DTYPE,
    CacheIndex,
    as_spacing,
    cache_path,
    npy_shape,
    read_crop,
    spacing_json,
    spacing_tag,
)
from datamodules.datamodule import resolve_cache_root, source_cache_root
from datamodules.image_dataset import ImageOnlyVolumeDataset
from datamodules.mixing import data_sources
from datamodules.sources.ct_rate import scan_ct_rate
from datamodules.transforms import as_size3, centre_crop_start, crop_start, hu_to_input
from datamodules.uniferum_geometry import UniferumView

SPACING = (6.0, 6.0, 12.0)  # (x, y, z) mm: coarse, so the build stays fast
CROP = [32, 32, 16]  # non-cubic, multiples of the tiny Primus' 8-voxel patches


@pytest.fixture(scope="module")
def aniso_cache_dir(
    small_ct_rate_root: Path, run_preprocess, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The phantom CT-RATE cached at 6 x 6 x 12 mm through `ctvlp preprocess --spacing 6,6,12`."""
    cache_dir = tmp_path_factory.mktemp("aniso_cache")
    run_preprocess("ct_rate", small_ct_rate_root, cache_dir, "6,6,12")
    return cache_dir


@pytest.fixture(scope="module")
def aniso_index(aniso_cache_dir: Path) -> CacheIndex:
    return CacheIndex.load(cache_path(aniso_cache_dir, "ct_rate", SPACING, "paper"))


def _overrides(root: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        f"data.cache_dir={cache_dir}",
        "data.spacing=[6,6,12]",
        f"data.crop_size=[{CROP[0]},{CROP[1]},{CROP[2]}]",
        "data.val_patients=1",
        "data.num_workers=0",
        "data.batch_size=2",
        *extra,
    ]


# ------------------------------------------------------------------------------------- the cache
def test_spacing_values_and_path_tags(tmp_path: Path) -> None:
    assert spacing_tag(2.0) == "2mm" and spacing_tag([2, 2, 2]) == "2mm"  # isotropic: today's tag
    assert spacing_tag([1.5, 1.5, 3]) == "1.5x1.5x3mm"
    assert (
        cache_path(tmp_path, "ct_rate", [1.5, 1.5, 3], "paper") == tmp_path / "ct_rate" / "1.5x1.5x3mm-paper"
    )
    assert cache_path(tmp_path, "ct_rate", 2, "paper") == tmp_path / "ct_rate" / "2mm-paper"
    assert as_spacing("1.5,1.5,3") == (1.5, 1.5, 3.0) and as_spacing("2") == 2.0
    assert spacing_json(2) == 2.0 and spacing_json((1.5, 1.5, 3)) == [1.5, 1.5, 3.0]
    for bad in ([1.5, 3], [1, 0, 2], -1, "a"):
        with pytest.raises(ValueError, match="spacing"):
            as_spacing(bad)


def test_preprocess_cli_parses_spacing_lists() -> None:
    parser = argparse.ArgumentParser()
    preprocess_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["preprocess", "--root", "x", "--spacing", "2", "--spacing", "1.5,1.5,3"])
    assert args.spacing == [2.0, (1.5, 1.5, 3.0)]
    with pytest.raises(SystemExit):
        parser.parse_args(["preprocess", "--root", "x", "--spacing", "1.5,3"])


def test_anisotropic_cache_has_the_per_axis_grid(aniso_cache_dir, aniso_index, small_ct_rate_root) -> None:
    root = aniso_index.root
    assert root == (aniso_cache_dir / "ct_rate" / "6x6x12mm-paper").absolute()
    assert aniso_index.spacing == SPACING
    assert json.loads((root / "index.json").read_text(encoding="utf-8"))["spacing"] == list(SPACING)
    assert json.loads((root / BUILD_NAME).read_text(encoding="utf-8"))["spacing"] == list(SPACING)
    records = {r.id: r for r in scan_ct_rate(small_ct_rate_root).records}
    assert len(aniso_index.entries) == len(records)
    with_masks = 0
    for entry in aniso_index.entries:
        record = records[entry.id]
        # The phantom's affines are axis-aligned (flips only), so RAS+ keeps the axis order; the
        # spacing comes from the metadata CSV (record.spacing), never the header.
        n = np.array(nib.load(record.image_path).shape, dtype=np.float64)
        expected = np.floor(n * np.array(record.spacing) / np.array(SPACING)).astype(int)
        assert entry.shape == tuple(expected.tolist()), entry.id
        assert npy_shape(entry.file) == entry.shape
        if entry.masks:  # organ masks on the same anisotropic grid
            with_masks += 1
            assert npy_shape(entry.mask_file, MASK_DTYPE) == entry.shape
    assert with_masks > 0


def test_source_spacing_lists_name_their_cache(tmp_path: Path, data_config) -> None:
    data = data_config(
        tmp_path,
        sources=[
            {"name": "ct_rate", "root": "a", "spacing": [1.5, 1.5, 3]},
            {"name": "image_only", "root": "b", "spacing": [2, 2, 2]},
            {"name": "merlin", "root": "c"},
        ],
    )
    roots = [source_cache_root(data, s).name for s in data_sources(data)]
    assert roots == ["1.5x1.5x3mm-paper", "2mm-paper", "6mm-paper"]


# ------------------------------------------------------------------ the DataModule, non-cubic crops
def test_datamodule_serves_non_cubic_crops_from_the_anisotropic_cache(
    aniso_cache_dir, aniso_index, small_ct_rate_root
) -> None:
    from lightning_modules.base import ObjectiveModule, image_encoder_from_config
    from lightning_modules.mae_objective import build_head

    cfg = load_experiment("colipri_c", "cpu_demo", _overrides(small_ct_rate_root, aniso_cache_dir))
    assert resolve_cache_root(cfg.data) == aniso_index.root  # the cache built above, reused
    datamodule = ObjectiveModule.build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    val = datamodule.datasets["val"]
    sample = val[0]
    assert sample["image"].shape == (1, *CROP)
    # evaluation: the centre crop of the whole volume (no crop field)
    entry = val.entries[0]
    start = centre_crop_start(entry.shape, CROP)
    assert torch.equal(sample["image"], hu_to_input(read_crop(entry, start, tuple(CROP))))
    train = datamodule.datasets["train"]
    assert train[(0, 3)]["image"].shape == (1, *CROP)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape == (2, 1, *CROP)
    # The Primus encoder and the MAE head are built for the (x, y, z) crop.
    encoder = image_encoder_from_config(cfg).eval()
    with torch.no_grad():
        output = encoder(batch["image"])
        assert output.grid == (CROP[0] // 8, CROP[1] // 8, CROP[2] // 8) and output.pooled.shape[0] == 2
        head = build_head(cfg, encoder)
        assert head.grid == (CROP[0] // 8, CROP[1] // 8, CROP[2] // 8)
        assert torch.isfinite(head(encoder.backbone, batch["image"]).loss)


def test_evaluation_settings_take_non_cubic_inputs(small_ct_rate_root, tmp_path) -> None:
    from evaluation.runner import EvalSettings

    cfg = load_experiment("colipri_c", "cpu_demo", _overrides(small_ct_rate_root, tmp_path))
    assert EvalSettings.from_config(cfg, ["probe"]).input_size == tuple(CROP)
    cube = load_experiment("colipri_c", "cpu_demo", [f"data.root={small_ct_rate_root}"])
    assert EvalSettings.from_config(cube, ["probe"]).input_size == 48  # an int, as before


# ---------------------------------------------------------------------------------- the crop field
def _old_random_crop_start(shape, size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """The training crop start before crop_size could be (x, y, z): the reference for no field."""
    starts = []
    for extent in shape:
        low, high = min(0, extent - size), max(0, extent - size)
        starts.append(int(rng.integers(low, high + 1)))
    return tuple(starts)


def test_no_field_draws_the_crops_drawn_before() -> None:
    for shape in [(60, 50, 40), (20, 70, 33)]:
        for seed in range(5):
            new = crop_start(shape, 32, None, np.random.default_rng([seed, 1, 2]))
            assert new == _old_random_crop_start(shape, 32, np.random.default_rng([seed, 1, 2]))
            assert crop_start(shape, (32, 32, 32)) == tuple((s - 32) // 2 for s in shape)


def test_random_crops_stay_inside_the_centred_field() -> None:
    shape, size, field = (70, 41, 30), (16, 16, 8), (48, 48, 24)  # the field pads y, crops x and z
    origin = centre_crop_start(shape, field)
    assert origin == (11, -4, 3)
    seen = set()
    for epoch in range(200):
        start = crop_start(shape, size, field, np.random.default_rng([0, epoch, 5]))
        for s, o, c, f in zip(start, origin, size, field, strict=True):
            assert o <= s <= o + f - c
        seen.add(start)
    assert len(seen) > 50
    # evaluation: the field's centre
    assert crop_start(shape, size, field) == tuple(
        o + (f - c) // 2 for o, f, c in zip(origin, field, size, strict=True)
    )


def test_dataset_crop_field_is_exact_and_a_pure_function_of_the_key(aniso_index) -> None:
    entry = max(aniso_index.entries, key=lambda e: e.shape[0])
    size = (16, 16, 8)
    field = (entry.shape[0] - 2, entry.shape[1] + 10, entry.shape[2])  # crops x, pads y with air
    field = tuple(f + (f % 2) for f in field)
    data = ImageOnlyVolumeDataset([entry], size, train=True, seed=3, crop_field=field)
    first, again = data[(0, 7)]["image"], data[(0, 7)]["image"]
    assert torch.equal(first, again)
    expected_start = crop_start(entry.shape, size, field, np.random.default_rng([3, 7, 0]))
    assert torch.equal(first, hu_to_input(read_crop(entry, expected_start, size)))
    origin = centre_crop_start(entry.shape, field)
    assert all(o <= s <= o + f - c for s, o, f, c in zip(expected_start, origin, field, size, strict=True))
    assert not torch.equal(first, data[(0, 8)]["image"]) or not torch.equal(first, data[(0, 9)]["image"])
    # evaluation: the centre of the field; y is padded beyond the volume with air (-1 at the edge)
    big = ImageOnlyVolumeDataset([entry], (16, entry.shape[1] + 10, 8), train=False, crop_field=field)
    image = big[0]["image"]
    assert image.shape == (1, 16, entry.shape[1] + 10, 8)
    assert (image[0, :, 0, :] == -1).all() and (image[0, :, -1, :] == -1).all()
    with pytest.raises(ValueError, match="larger than crop_field"):
        ImageOnlyVolumeDataset([entry], (16, 16, 8), train=False, crop_field=(8, 16, 8))


# --------------------------------------------------------------------------------------- HU window
def test_hu_window_values() -> None:
    hu = np.array([-1000, 200, -400, 1000, -1024, 500], dtype=np.int16)
    out = hu_to_input(hu, (-1000, 200))[0]
    assert out.tolist() == [-1.0, 1.0, 0.0, 1.0, -1.0, 1.0]
    values = np.arange(-1000, 1001, dtype=np.int16)
    expected = (np.clip(values.astype(np.float64), -1000, 200) + 1000) / 1200 * 2 - 1
    assert np.abs(hu_to_input(values, (-1000, 200))[0].numpy() - expected).max() < 1e-6
    with pytest.raises(ValueError, match="lo < hi"):
        hu_to_input(hu, (200, -1000))


def test_default_window_is_todays_mapping_bit_for_bit() -> None:
    values = np.arange(-1100, 1101, dtype=np.int16).reshape(1, 1, -1)
    today = torch.from_numpy(values.astype(np.float32)).mul_(1.0 / 1000.0).clamp_(-1.0, 1.0).unsqueeze(0)
    assert torch.equal(hu_to_input(values), today)
    assert torch.equal(hu_to_input(values, (-1000, 1000)), today)


def test_dataset_applies_the_configured_window(aniso_index) -> None:
    entry = aniso_index.entries[0]
    size = as_size3([16, 16, 8])
    plain = ImageOnlyVolumeDataset([entry], size, train=False)
    windowed = ImageOnlyVolumeDataset([entry], size, train=False, hu_window=(-1000, 200))
    hu = read_crop(entry, centre_crop_start(entry.shape, size), size).astype(np.float64)
    assert torch.equal(plain[0]["image"][0], hu_to_input(hu)[0])
    expected = (np.clip(hu, -1000, 200) + 1000) / 1200 * 2 - 1
    assert np.abs(windowed[0]["image"][0].numpy() - expected).max() < 1e-6


# ------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.spacing=[1.5,3]"], r"data\.spacing=.*list of 3 numbers"),
        (["data.spacing=[2]"], r"data\.spacing=.*list of 3 numbers"),
        (["data.spacing=[1.5,0,3]"], r"data\.spacing=.*positive"),
        (["data.spacing=-2"], r"data\.spacing=.*positive"),
        (["data.image_only_spacing=[1,2]"], r"data\.image_only_spacing"),
        (["data.crop_size=[48,48,50]"], r"multiple of model\.image\.patch_size=8 on every axis"),
        (["data.crop_size=[48,48]"], r"data\.crop_size=.*3 ints"),
        (["data.crop_field=[64,40,64]"], r"larger than data\.crop_field"),
        (["data.crop_field=[64,64,0]"], r"data\.crop_field=.*positive"),
        (["data.hu_window=[200,-1000]"], r"lo must be below hi"),
        (["data.hu_window=[200,200]"], r"lo must be below hi"),
        (["data.hu_window=[-1000,1500]"], r"outside \[-1000, 1000\]"),
        (["data.hu_window=[-1000]"], r"two numbers"),
    ],
)
def test_config_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_experiment("colipri_c", "cpu_demo", overrides)


def test_greenrfm_style_config_loads() -> None:
    cfg = load_experiment(
        "colipri_cm",
        "cpu_demo",
        [
            "data.spacing=[1.5,1.5,3]",
            "data.image_only_spacing=[1,1,2]",
            "data.crop_size=[48,48,32]",
            "data.crop_field=[64,64,40]",
            "data.hu_window=[-1000,200]",
        ],
    )
    assert list(cfg.data.spacing) == [1.5, 1.5, 3] and list(cfg.data.crop_field) == [64, 64, 40]
    assert [as_spacing(s.spacing) for s in data_sources(cfg.data) if s.spacing is not None] == [
        (1.0, 1.0, 2.0)
    ]
    default = load_experiment("colipri_c", "cpu_demo", [])
    assert default.data.crop_field is None and list(default.data.hu_window) == [-1000, 1000]


def test_uniferum_refuses_an_anisotropic_spacing() -> None:
    with pytest.raises(ConfigError, match="Uniferum reads an isotropic cache"):
        load_experiment("uniferum", "cpu_demo", ["data.spacing=[1.5,1.5,3]"])
    load_experiment("uniferum", "cpu_demo", ["data.spacing=[6,6,6]"])  # three equal values: isotropic
    with pytest.raises(ValueError, match="isotropic"):
        UniferumView(None, (1.5, 1.5, 3.0))  # type: ignore[arg-type]
