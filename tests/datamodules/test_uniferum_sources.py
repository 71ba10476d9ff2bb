"""The Uniferum DataModule reads ``data.sources`` as the CT DataModule does: a source's own
``spacing`` sets its cache (and the spacing its crops are read at), not ``data.spacing``."""

from __future__ import annotations

from pathlib import Path

import torch

from ctvlp.config.loader import load_experiment
from datamodules.cache import CacheIndex, cache_path
from datamodules.uniferum_geometry import UniferumView

DATA_SPACING = 6.0
SOURCE_SPACING = 8.0


def test_a_per_source_spacing_sets_the_uniferum_cache(small_ct_rate_root: Path, tmp_path: Path) -> None:
    from lightning_modules.uniferum import UniferumModule

    overrides = [
        f"data.root={small_ct_rate_root}",
        f"data.cache_dir={tmp_path}",
        f"data.spacing={DATA_SPACING}",
        f"data.sources=[{{name: ct_rate, root: '{small_ct_rate_root}', spacing: {SOURCE_SPACING}}}]",
        "data.val_patients=2",
        "data.num_workers=0",
        "data.preprocess_workers=1",
    ]
    cfg = load_experiment("uniferum_seg", "cpu_demo", overrides)
    datamodule = UniferumModule.build_datamodule(cfg)
    datamodule.prepare_data()

    built = cache_path(tmp_path, "ct_rate", SOURCE_SPACING, "paper")
    assert (built / "index.json").is_file()
    assert not cache_path(tmp_path, "ct_rate", DATA_SPACING, "paper").exists()
    index = CacheIndex.load(built)
    assert index.spacing == SOURCE_SPACING and any(e.masks for e in index.entries)

    datamodule.setup()
    val = datamodule.datasets["val"]
    sample = val[0]
    entry = val.volumes.entries[0]
    # The crop is read at the cache's 8 mm: the same field of view as at 6 mm, in fewer voxels.
    expected = UniferumView(datamodule.geometry, SOURCE_SPACING)(entry, val.volumes.boxes[entry.id], None)
    assert sample["image"].shape == (1, *cfg.uniferum.input_shape)
    assert torch.equal(sample["image"], expected.image)
