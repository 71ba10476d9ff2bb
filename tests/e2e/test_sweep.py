"""A 3-point star sweep through `ctvlp sweep` on the phantom: table, and skipping on a re-run."""

from __future__ import annotations

from pathlib import Path

import yaml

from ctvlp.cli import main
from ctvlp.config.loader import load_experiment
from ctvlp.sweep.spec import expand, load_spec

# Star mode runs the base once and skips the base's own value on each axis, so the lr axis lists
# the base lr (read from the profile, not restated) beside one real change.
BASE_LR = float(load_experiment("colipri_c", "cpu_demo").optim.lr)
OTHER_LR = 0.003 if BASE_LR != 0.003 else 0.001


def _write_spec(path: Path, phantom_overrides: list[str]) -> Path:
    spec = {
        "base": "colipri_c",
        "profile": "cpu_demo",
        "mode": "star",
        "overrides": [
            *phantom_overrides,
            "trainer.max_steps=4",
            "optim.warmup_steps=1",
            "trainer.val_check_interval=4",
            "evaluation.final_splits=[val]",
            "evaluation.final_tasks=[]",  # the table reads retrieval only
            "evaluation.preview_volumes=0",
            "data.num_workers=0",
        ],
        "params": {"optim.lr": [BASE_LR, OTHER_LR], "loss.kind": ["sigmoid"]},
        "metrics": ["val/retrieval/R@1", "val/retrieval/R@5"],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_star_expansion_runs_base_once_and_one_change_per_run(
    tmp_path: Path, phantom_overrides: list[str]
) -> None:
    runs = expand(load_spec(str(_write_spec(tmp_path / "star.yaml", phantom_overrides))))
    assert [r.run_id for r in runs] == ["base", f"lr={OTHER_LR}", "kind=sigmoid"]
    assert runs[1].overrides == [f"optim.lr={OTHER_LR}"]


def test_star_sweep_tabulates_and_skips_finished_runs(
    tmp_path: Path, phantom_overrides: list[str], capsys
) -> None:
    spec = _write_spec(tmp_path / "star.yaml", phantom_overrides)
    assert main(["sweep", str(spec), "--runs-dir", str(tmp_path / "runs")]) == 0
    first = capsys.readouterr().out
    table = (tmp_path / "runs" / "sweeps" / "star" / "results.md").read_text(encoding="utf-8").splitlines()
    assert table[0] == "| run | change | val/retrieval/R@1 | val/retrieval/R@5 |"
    assert [row.split("|")[1].strip() for row in table[2:]] == ["base", f"lr={OTHER_LR}", "kind=sigmoid"]
    assert "—" not in "".join(table[2:])  # every run produced its metrics
    assert first.count(": running") == 3

    assert main(["sweep", str(spec), "--runs-dir", str(tmp_path / "runs")]) == 0
    second = capsys.readouterr().out
    assert second.count("finished earlier, skipped") == 3 and ": running" not in second
