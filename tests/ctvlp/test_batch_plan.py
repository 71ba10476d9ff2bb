"""The global batch of a recipe stays the paper's on any device count (ctvlp/config/batch.py)."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from ctvlp.config.batch import BatchPlan, plan_from_data, plan_from_global
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment


@pytest.mark.parametrize(("devices", "per_device"), [(1, 16), (2, 8), (4, 4), (8, 2)])
def test_global_16_splits_over_the_devices(devices: int, per_device: int) -> None:
    plan = plan_from_global(16, devices)
    assert plan == BatchPlan(per_device=per_device, devices=devices, nodes=1, accumulate=1)
    assert plan.global_batch == 16


def test_nodes_and_accumulation_divide_the_global_batch_too() -> None:
    assert plan_from_global(16, 4, accumulate=2).per_device == 2
    assert plan_from_global(16, 8, nodes=2).per_device == 1
    plan = plan_from_global(64, 2, nodes=2, accumulate=4)
    assert (plan.per_device, plan.world, plan.global_batch) == (4, 4, 64)
    assert plan.describe() == (
        "global batch 64 = 4 per device x 2 device(s) x 2 node(s) x 4 accumulation step(s)"
    )


def test_a_global_batch_that_does_not_divide_stops_with_what_to_do() -> None:
    with pytest.raises(ConfigError) as error:
        plan_from_global(16, 3)
    message = str(error.value)
    assert "data.global_batch_size=16" in message and "3 device(s)" in message
    assert "trainer.devices" in message and "trainer.accumulate_grad_batches" in message
    assert "15 or 18" in message  # the nearest global batches that 3 devices split evenly
    with pytest.raises(ConfigError, match="= 48 equal per-device batches.*here: 48;"):
        plan_from_global(16, 8, accumulate=6)


def test_a_memory_cap_raises_the_accumulation_to_the_smallest_count_that_fits() -> None:
    # Uniferum's paper split: 64 = 8 per device x 8 accumulation steps on one H100.
    assert plan_from_global(64, 1, max_per_device=8) == BatchPlan(8, 1, 1, 8)
    assert plan_from_global(64, 8, max_per_device=8) == BatchPlan(8, 8, 1, 1)  # fits without
    assert plan_from_global(16, 1, max_per_device=5) == BatchPlan(4, 1, 1, 4)  # 5 does not divide 16
    assert plan_from_global(16, 2, accumulate=2, max_per_device=8) == BatchPlan(4, 2, 1, 2)
    assert plan_from_global(24, 1, max_per_device=5) == BatchPlan(
        4, 1, 1, 6
    )  # 24 = 4 x 6; 5 does not divide 24
    with pytest.raises(ConfigError, match="data.max_batch_per_device=0"):
        plan_from_global(16, 1, max_per_device=0)


def test_per_device_batch_without_a_global_batch_grows_with_the_devices() -> None:
    data = OmegaConf.create({"global_batch_size": None, "batch_size": 4})
    assert plan_from_data(data, accumulate=1, devices=4).global_batch == 16
    with pytest.raises(ConfigError, match="data.global_batch_size"):
        plan_from_data(OmegaConf.create({"global_batch_size": None, "batch_size": None}), accumulate=1)


def test_experiments_state_their_paper_global_batch_and_profiles_keep_it() -> None:
    """The GPU profiles no longer set a per-GPU batch: COLIPRI keeps 16, Uniferum 64 on 4 GPUs."""
    colipri = load_experiment("colipri_c", "a100x4", ["data.root=/x"])
    uniferum = load_experiment("uniferum", "a100x4", ["data.root=/x", "uniferum.vision_weights_2d=none"])
    assert (colipri.data.global_batch_size, uniferum.data.global_batch_size) == (16, 64)
    devices = int(colipri.trainer.devices)
    assert devices == 4
    assert plan_from_data(colipri.data, 1, devices).per_device == 4
    assert plan_from_data(uniferum.data, 1, devices).per_device == 16
    # Until `ctvlp fit` knows the devices, data.batch_size holds the one-device value.
    assert colipri.data.batch_size == 16


def test_an_explicit_per_device_batch_replaces_the_global_one_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_experiment("colipri_c", "cpu_demo", ["data.batch_size=4"])
    assert (cfg.data.batch_size, cfg.data.global_batch_size) == (4, None)
    assert "data.batch_size=4 given" in caplog.text and "data.global_batch_size=8" in caplog.text
