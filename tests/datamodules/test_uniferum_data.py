"""The Uniferum crop geometry and the Uniferum DataModule's batches, on the session phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ctvlp.config.loader import load_experiment
from datamodules.cache import CacheIndex, cache_path, read_volume
from datamodules.totalseg import ORGANS
from datamodules.uniferum_geometry import (
    UniferumGeometry,
    UniferumView,
    body_centre,
    ensure_boxes,
    organ_available,
    organ_mask,
)

SPACING = 6.0


@pytest.fixture(scope="module")
def index(phantom_cache_dir: Path) -> CacheIndex:
    return CacheIndex.load(cache_path(phantom_cache_dir, "ct_rate", SPACING, "paper"))


def test_crop_boxes_centre_the_body_and_limit_z_to_the_lungs(index: CacheIndex) -> None:
    boxes = ensure_boxes(index, lung_margin_mm=5.0)
    assert set(boxes) == {e.id for e in index.entries}
    for entry in index.entries[:8]:
        box = boxes[entry.id]
        bits = np.load(entry.mask_file)
        lungs = np.flatnonzero(((bits >> ORGANS.index("lungs")) & 1).any(axis=(0, 1)))
        assert box.z_keep == (lungs[0] - 1, lungs[-1] + 1)  # 5 mm at 6 mm spacing: one slice
        centre = body_centre(read_volume(entry))
        assert centre is not None and box.centre[:2] == pytest.approx(centre[:2])
        # the phantom's body outline (a cached mask) and the hulled soft-tissue body agree
        body = np.nonzero((bits >> ORGANS.index("body")) & 1)
        assert abs(box.centre[0] - body[0].mean()) < 1.0 and abs(box.centre[1] - body[1].mean()) < 1.0
    again = ensure_boxes(index, lung_margin_mm=5.0)  # read back from uniferum_boxes.json
    assert again == boxes and (index.root / "uniferum_boxes.json").is_file()


def test_body_centre_is_the_centre_of_the_hulled_soft_tissue_component() -> None:
    """A C-shaped body wall (soft tissue) around air: its own centre of mass lies off to the closed
    side, the per-slice convex hull fills the gap, so the centre is the ring's centre. A brighter
    block (bone, outside the window) and a smaller soft-tissue blob (a table) do not count."""
    hu = np.full((40, 40, 4), -1000.0)
    x, y = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    radius = np.hypot(x - 20.0, y - 20.0)
    wall = (radius >= 10) & (radius <= 13) & ~((x > 24) & (abs(y - 20) <= 4))  # open towards +x
    hu[wall] = 40.0
    hu[18:23, 18:23, :] = 600.0  # bone in the middle: outside the window, inside the hull
    hu[0:3, 0:3, :] = 20.0  # a small separate soft-tissue component
    own = np.nonzero(np.broadcast_to(wall[..., None], hu.shape))
    assert own[0].mean() == pytest.approx(18.42, abs=0.01)  # pulled towards the closed side
    centre = body_centre(hu)
    assert centre is not None
    # the hull's chord across the gap cuts off a sliver on the open side: 19.88, not 20
    assert centre[0] == pytest.approx(20.0, abs=0.15) and centre[1] == pytest.approx(20.0, abs=1e-9)
    assert centre[2] == pytest.approx(1.5)
    assert body_centre(np.full((8, 8, 3), -1000.0)) is None


def test_view_shapes_alignment_and_determinism(index: CacheIndex) -> None:
    geometry = UniferumGeometry(input_shape=(64, 64, 32))
    view = UniferumView(geometry, SPACING)
    boxes = ensure_boxes(index)
    entry = index.entries[0]
    plain = view(entry, boxes[entry.id], None, with_masks=True)
    assert (
        plain.image.shape == (1, 64, 64, 32) and plain.bits is not None and plain.bits.shape == (64, 64, 32)
    )
    assert plain.image.min() >= -1 and plain.image.max() <= 1
    lungs = organ_mask(plain.bits, "lungs").bool()
    assert plain.image[0][lungs].mean() < -0.6
    # the lungs fill most of their z range: the crop is lung-limited and lung-centred in z
    z_with_lungs = lungs.any(dim=0).any(dim=0).nonzero()
    assert z_with_lungs.min() <= 3 and z_with_lungs.max() >= 28
    a = view(entry, boxes[entry.id], np.random.default_rng(5), with_masks=True)
    b = view(entry, boxes[entry.id], np.random.default_rng(5), with_masks=True)
    assert torch.equal(a.image, b.image) and torch.equal(a.bits, b.bits)
    c = view(entry, boxes[entry.id], np.random.default_rng(6), with_masks=True)
    assert not torch.equal(a.image, c.image)


def test_datamodule_batches(phantom_overrides: list[str]) -> None:
    from lightning_modules.uniferum import UniferumModule

    cfg = load_experiment("uniferum_seg", "cpu_demo", [*phantom_overrides, "data.num_workers=0"])
    datamodule = UniferumModule.build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    shape = tuple(cfg.uniferum.input_shape)
    train = datamodule.datasets["train"]
    epoch = train.epoch_samples(0)
    seg_index = int(np.flatnonzero(np.isnan(epoch.target))[0])
    cls_index = int(np.flatnonzero(~np.isnan(epoch.target))[0])
    batch = datamodule.collate([train[(seg_index, 0)], train[(cls_index, 0)]])
    assert batch["image"].shape == (2, 1, *shape)
    assert batch["is_seg"].tolist() == [True, False]
    assert batch["seg_target"].shape[0] == 2 and batch["seg_target"].shape[2] == int(cfg.uniferum.u) ** 3
    assert batch["seg_target"][0].sum() > 0 and batch["seg_target"][1].sum() == 0
    assert batch["task_text"][0].startswith("Segment ") and batch["task_text"][1].startswith("Diagnose ")
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    evaluation = next(iter(datamodule.loader("val")))
    n_tasks = len(datamodule.tasks)
    assert evaluation["labels"].shape[1] == n_tasks == evaluation["task_input_ids"].shape[0]
    assert evaluation["seg_available"].all()
    assert len(evaluation["task_kinds"]) == n_tasks
    OmegaConf.to_container(cfg)  # the config stays plain (checkpointable)


def test_totalsegmentator_organ_tasks_read_the_cached_label_map(phantom_overrides: list[str]) -> None:
    """Fine organs (a lung lobe, the thoracic vertebrae) are available where the label map holds
    them, their targets come from it, and an organ the phantom never draws (a rib) makes no task."""
    from lightning_modules.uniferum import UniferumModule

    organs = "[lungs,lung_upper_lobe_left,lung_lower_lobe_left,thoracic_vertebrae,rib_left_5]"
    overrides = [*phantom_overrides, "data.num_workers=0", f"uniferum.seg_organs={organs}"]
    cfg = load_experiment("uniferum_seg", "cpu_demo", [*overrides, "uniferum.seg_fraction=0.5"])
    datamodule = UniferumModule.build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    train = datamodule.datasets["train"]
    entry = train.volumes.entries[0]
    assert organ_available(entry, "lung_upper_lobe_left") and organ_available(entry, "thoracic_vertebrae")
    assert not organ_available(entry, "rib_left_5")
    box = train.volumes.boxes[entry.id]
    view = train.volumes.views[entry.source](entry, box, None, with_masks=True)
    lungs, upper, lower = (view.organ(o) for o in ("lungs", "lung_upper_lobe_left", "lung_lower_lobe_left"))
    assert upper.sum() > 0 and lower.sum() > 0 and not (upper * lower).any()
    assert not (upper * (1 - lungs)).any() and view.organ("rib_left_5").sum() == 0
    epoch = train.epoch_samples(0)
    seg_tasks = [datamodule.tasks[int(t)].organ for t in epoch.task[np.isnan(epoch.target)]]
    assert {"lung_upper_lobe_left", "thoracic_vertebrae"} <= set(seg_tasks)
    assert "rib_left_5" not in seg_tasks
    i = int(np.flatnonzero(np.isnan(epoch.target))[seg_tasks.index("thoracic_vertebrae")])
    sample = train[(i, 0)]
    assert (
        sample["task_text"] == "Segment thoracic vertebrae in the image." and sample["seg_target"].sum() > 0
    )
    evaluation = next(iter(datamodule.loader("val")))
    names = [t.organ for t in datamodule.tasks if t.kind == "segmentation"]
    available = evaluation["seg_available"]
    assert available[:, names.index("lung_lower_lobe_left")].all()
    assert not available[:, names.index("rib_left_5")].any()
    with pytest.raises(Exception, match="unknown organ"):
        bad = load_experiment("uniferum_seg", "cpu_demo", [*phantom_overrides, "uniferum.seg_organs=[lung]"])
        UniferumModule.build_datamodule(bad).setup()
