"""Compare specs are checked before anything runs; the table marks the best value per column, shows
CIs, and names the reason of every missing cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from ctvlp.compare.jobs import JobRecord
from ctvlp.compare.pipeline import Comparison, Progress, Row, Stage
from ctvlp.compare.plots import write_plots
from ctvlp.compare.spec import CompareSpec, EncoderSpec, load_spec
from ctvlp.compare.tables import cell, cost_summary, gpu_hours, markdown, results_json
from ctvlp.config.errors import ConfigError


def _write(path: Path, spec: dict) -> str:
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


def test_spec_expands_task_groups_and_reads_encoders(tmp_path: Path) -> None:
    spec = load_spec(
        _write(
            tmp_path / "s.yaml",
            {
                "encoders": [
                    {"name": "a", "experiment": "colipri_c"},
                    {"name": "b", "run": "runs/x/version_0"},
                ],
                "tasks": ["probe", "zeroshot", "retrieval"],
            },
        ),
        profile="none",
    )
    assert spec.tasks == ["retrieval", "zeroshot_native", "zeroshot_short", "probe"]
    assert spec.profile is None and spec.baselines and spec.launcher == "local"
    assert [e.source for e in spec.encoders] == ["trained: colipri_c", "run runs/x/version_0"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"encoders": [{"name": "a", "experiment": "colipri_c"}], "tasks": ["retreival"]},
            "Unknown evaluation task 'retreival'",
        ),
        ({"encoders": [{"name": "a", "experiment": "c", "run": "r"}], "tasks": ["probe"]}, "exactly one of"),
        (
            {"encoders": [{"name": "a", "colipri_weights": "w.safetensors"}], "tasks": ["probe"]},
            "needs the 'experiment'",
        ),
        ({"encoders": [], "tasks": ["probe"]}, "lists no encoder"),
        ({"encoders": [{"name": "a", "experiment": "c"}] * 2, "tasks": ["probe"]}, "names repeat"),
        (
            {"encoders": [{"name": "a", "experiment": "c"}], "tasks": ["probe"], "lancher": "slurm"},
            "unknown compare key",
        ),
        (
            {"encoders": [{"name": "a", "experiment": "c"}], "tasks": ["probe"], "launcher": "pbs"},
            "launcher must be",
        ),
    ],
)
def test_bad_specs_fail_before_anything_runs(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(_write(tmp_path / "bad.yaml", spec))


def _row(
    name: str, results: dict[str, float], missing: dict[str, str] | None = None, baseline: bool = False
) -> Row:
    config = OmegaConf.create({"module": "colipri"})
    encoder = EncoderSpec(name=name, experiment=None if baseline else "colipri_c", baseline=baseline)
    row = Row(encoder, config, Path(name), results=results, missing=missing or {})
    if not baseline:
        row.train = JobRecord("k", [], 0, wall_s=7200.0, cpu_s=14400.0, peak_rss_gb=3.0, finished_at="")
        row.costs = {"params": 2_500_000, "flops_per_sample": 4e9, "samples": 10, "train_flops": 4e10}
    return row


def test_table_bolds_the_best_shows_cis_and_explains_missing_cells() -> None:
    spec = CompareSpec(
        name="t", encoders=[], tasks=["retrieval", "probe"], headline={"retrieval": "test/retrieval/MnR"}
    )
    rows = [
        _row(
            "a",
            {
                "test/retrieval/MnR": 12.0,
                "test/probe/AUROC": 0.71,
                "test/probe/AUROC_ci_low": 0.65,
                "test/probe/AUROC_ci_high": 0.77,
            },
        ),  # fmt: skip
        _row("b", {"test/retrieval/MnR": 9.5}, missing={"probe": "no text encoder"}),
        _row("random_a", {"test/retrieval/MnR": 30.0, "test/probe/AUROC": 0.5}, baseline=True),
        # inside a's CI [0.65, 0.77]: not told apart from the best
        _row("c", {"test/retrieval/MnR": 31.0, "test/probe/AUROC": 0.66}),
        # its own CI [0.58, 0.72] reaches a's 0.71
        _row(
            "d", {"test/probe/AUROC": 0.6, "test/probe/AUROC_ci_low": 0.58, "test/probe/AUROC_ci_high": 0.72}
        ),
    ]
    lines = markdown(rows, spec).splitlines()
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:7]}
    # Mean rank: lower is better, so b's 9.5 is the bold one; probe: a's 0.71 with its CI.
    assert cells["b"][1] == "**9.500**" and cells["a"][1] == "12.000"
    assert cells["a"][2] == "**0.710 [0.650, 0.770]**"
    assert cells["b"][2] == "n/a [1]" and "[1] b / probe: no text encoder" in lines
    # CIs: c's 0.66 lies in a's interval, the best 0.71 in d's; the baseline's 0.5 in neither.
    assert cells["c"][2] == "0.660 ≈" and cells["d"][2] == "0.600 [0.580, 0.720] ≈"
    assert cells["random_a"][2] == "0.500" and cells["c"][1] == "31.000"
    # Costs: 2 h wall, 4 CPU-hours, no GPU, 2.5 M parameters, 4 GFLOPs per sample; none for the baseline.
    assert cells["a"][3:] == ["2", "4", "—", "3", "2.5", "4"]
    assert cells["random_a"][3:] == ["—", "—", "—", "—", "—", "—"]
    summary = results_json(rows, spec)["encoders"]
    assert summary["b"]["tasks"]["probe"] == {"metric": "test/probe/AUROC", "missing": "no text encoder"}
    assert summary["random_a"]["baseline"] is True
    assert summary["a"]["tasks"]["probe"]["best"] and summary["c"]["tasks"]["probe"]["tied_with_best"]
    assert not summary["random_a"]["tasks"]["probe"]["tied_with_best"]


def test_stages_run_one_encoder_at_a_time_with_its_baseline_after_the_first_of_its_kind(
    tmp_path: Path,
) -> None:
    spec = load_spec(
        _write(
            tmp_path / "s.yaml",
            {
                "encoders": [
                    {"name": "c", "experiment": "colipri_c"},
                    {"name": "g", "experiment": "greenrfm"},
                    {"name": "cr", "experiment": "colipri_cr"},
                ],
                "tasks": ["retrieval", "segmentation"],
            },
        ),
        profile="cpu_demo",
    )
    comparison = Comparison(spec, tmp_path / "out")
    assert [r.name for r in comparison.rows] == ["c", "g", "cr", "random_colipri_c", "random_greenrfm"]
    labels = [stage.label for stage in comparison.stages()]
    assert labels == [
        f"{name}: {stage}"
        for name in ("c", "random_colipri_c", "g", "random_greenrfm", "cr")
        for stage in ("checkpoint", "eval retrieval", "segmentation")
    ]
    # A table written before a row's stages ran says so in the cell.
    assert cell(comparison.rows[2], spec, "retrieval")["missing"] == "pending"
    table = markdown(comparison.rows, spec)
    assert "| cr | trained: colipri_cr | pending | pending |" in table and "[1]" not in table


def test_plots_put_eight_task_panels_on_two_lines_and_mark_missing_bars(tmp_path: Path) -> None:
    tasks = ["retrieval", "zeroshot_native", "zeroshot_short", "zeroshot_prompts", "probe", "uniferum"]
    spec = CompareSpec(name="t", encoders=[], tasks=[*tasks, "reportgen", "segmentation"])
    rows = [
        _row("a", {"test/retrieval/R@5": 0.3, "test/probe/AUROC": 0.7, "test/dice/mean": 0.4}),
        _row("random_a", {"test/retrieval/R@5": 0.1, "test/probe/AUROC": 0.5}, baseline=True),
    ]
    written = write_plots(rows, spec, tmp_path)
    assert [p.name for p in written] == [f"{t}.png" for t in spec.tasks] + ["quality_vs_cost.png"]
    width, height = Image.open(tmp_path / "plots" / "quality_vs_cost.png").size
    assert (width, height) == (4 * 4.2 * 120, 2 * 3.6 * 120)  # four panels a line, at 120 dpi


def test_progress_calls_after_each_after_every_stage_including_a_slurm_submission() -> None:
    done = JobRecord("k", [], 0, wall_s=1.0, cpu_s=1.0, peak_rss_gb=0.1, finished_at="")
    outcomes = ["submitted as SLURM job 7; run ctvlp compare again once it ends", done, None]
    stages = [Stage(f"s{i}", "eval", lambda o=outcome: o) for i, outcome in enumerate(outcomes)]
    calls: list[int] = []
    progress = Progress(len(stages))
    progress.run(stages, after_each=lambda: calls.append(progress.done))
    assert calls == [1, 2, 3]
    assert len(progress.durations["eval"]) == 2  # the submission is not timed as a finished eval


@pytest.mark.parametrize(
    ("cuda_devices", "accelerator", "world", "expected"),
    [
        (8, "auto", 8, 16.0),  # 2 h on 8 GPUs
        (8, "gpu", 16, 32.0),  # 2 nodes x 8
        (0, "auto", 1, None),  # a CPU node
        (8, "cpu", 1, None),  # GPUs visible, the run asked for the CPU
    ],
)
def test_gpu_hours_are_wall_hours_times_the_gpus_the_run_trained_on(
    cuda_devices: int, accelerator: str, world: int, expected: float | None
) -> None:
    row = _row("a", {})
    row.train = JobRecord("k", [], 0, 7200.0, 100.0, 3.0, "", cuda_devices=cuda_devices)
    row.costs = {**row.costs, "world": world, "accelerator": accelerator}
    assert gpu_hours(row) == expected
    assert cost_summary(row)["gpu_h"] == expected
    assert _row("b", {}).train.cuda_devices == 0 and gpu_hours(_row("b", {})) is None  # older job.json


def test_cost_axis_labels_a_narrow_range_once_and_trained_rows_are_never_baseline_grey() -> None:
    import matplotlib.pyplot as plt

    from ctvlp.compare.plots import BASELINE_COLOUR, _colour, _cost_axis

    figure, (narrow, empty) = plt.subplots(1, 2)
    narrow.scatter([5.4e12, 5.5e12, 6.1e12], [0.3, 0.31, 0.32])
    _cost_axis(narrow, [5.4e12, 5.5e12, 6.1e12], "training FLOPs")
    figure.canvas.draw()
    assert [t.get_text() for t in narrow.get_xticklabels()] == ["5.4e+12", "6.1e+12"]
    assert not any(t.get_text() for t in narrow.get_xticklabels(minor=True))
    _cost_axis(empty, [], "training FLOPs")
    assert [t.get_text() for t in empty.texts] == ["training cost not measured"]
    plt.close(figure)
    colours = {_colour(_row(f"r{i}", {}), i) for i in range(20)}
    assert len(colours) == 9 and (0.4980392156862745,) * 3 not in colours  # tab10's grey
    assert _colour(_row("random", {}, baseline=True), 3) == BASELINE_COLOUR
