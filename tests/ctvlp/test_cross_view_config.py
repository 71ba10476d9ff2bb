"""objectives.mae.cross_view (RadFound's CC-MIM): the experiment loads, and what is not supported
fails at load time with an error that says what to set."""

from __future__ import annotations

import pytest

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment


def test_radfound_ccmim_is_mae_with_the_cross_view_term() -> None:
    cfg = load_experiment("radfound_ccmim", profile="cpu_demo")
    assert cfg.module == "mae"
    cross_view = cfg.objectives.mae.cross_view
    assert cross_view.enabled and cross_view.views == "crops"
    assert (cross_view.weight, cross_view.temperature, cross_view.proj_dim) == (0.1, 0.2, 128)
    assert not load_experiment("mae", profile="cpu_demo").objectives.mae.cross_view.enabled


@pytest.mark.parametrize("views", ["reconstructions", "spacings"])
def test_view_kinds_without_a_source_are_refused(views: str) -> None:
    with pytest.raises(ConfigError, match="not supported yet.*views=crops"):
        load_experiment(
            "radfound_ccmim", profile="cpu_demo", overrides=[f"objectives.mae.cross_view.views={views}"]
        )


def test_a_misspelt_view_kind_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'crops'"):
        load_experiment(
            "radfound_ccmim", profile="cpu_demo", overrides=["objectives.mae.cross_view.views=crop"]
        )


def test_beside_clip_it_needs_the_mae_objective() -> None:
    with pytest.raises(ConfigError, match="needs objectives.mae.enabled=true"):
        load_experiment("colipri_c", profile="cpu_demo", overrides=["objectives.mae.cross_view.enabled=true"])
    cfg = load_experiment(
        "colipri_cm", profile="cpu_demo", overrides=["objectives.mae.cross_view.enabled=true"]
    )
    assert cfg.objectives.mae.cross_view.enabled


def test_other_modules_refuse_it() -> None:
    with pytest.raises(ConfigError, match="only the MAE objective"):
        load_experiment("uniferum", profile="cpu_demo", overrides=["objectives.mae.cross_view.enabled=true"])
