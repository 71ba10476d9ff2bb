"""Every shipped sweep spec expands into valid experiment configs, as written and under cpu_demo."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ctvlp.config.loader import experiments_dir, load_experiment
from ctvlp.sweep.spec import expand, load_spec

SPECS = sorted(p.stem for p in (experiments_dir() / "sweeps").glob("*.yaml"))


def test_the_paper_ablation_sweeps_ship() -> None:
    assert {"colipri_c_star", "colipri_rrg_star", "colipri_mae_star"} <= set(SPECS)


@pytest.mark.parametrize("profile", [None, "cpu_demo"])
@pytest.mark.parametrize("name", SPECS)
def test_every_run_of_every_sweep_is_a_valid_config(name: str, profile: str | None) -> None:
    # The paper configs need the real dataset's path (only validated here, never read).
    data = [] if profile else ["data.root=/data/CT-RATE/dataset"]
    spec = load_spec(name, profile=profile, extra_overrides=data)
    runs = expand(spec)  # validates every run: a misspelt key or an invalid choice fails here
    assert runs[0].run_id == "base" and len({r.run_id for r in runs}) == len(runs) > 1
    for run in runs:
        cfg = load_experiment(spec.base, spec.profile, [*spec.overrides, *run.overrides])
        for key, value in run.changes.items():
            keys, values = key.split(","), value if "," in key else [value]
            for one_key, one_value in zip(keys, values, strict=True):
                assert OmegaConf.select(cfg, one_key) == one_value, (run.run_id, one_key)
