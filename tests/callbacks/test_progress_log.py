"""ProgressLog: with stdout not a terminal, `ctvlp fit` logs one progress line every
trainer.progress_every_n_steps steps (and at the last) instead of a tqdm bar, to stderr and to
<run>/train.log; and a fit prints neither of the two known-harmless warnings silenced at their
source (timm's torch.jit.interface FutureWarning, Lightning's modules-in-eval-mode warning)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from callbacks.progress_log import eta_seconds, format_duration, progress_line


def test_durations() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(9.4) == "9s"
    assert format_duration(65) == "1m05s"
    assert format_duration(260) == "4m20s"
    assert format_duration(3725) == "1h02m05s"
    assert format_duration(-3) == "0s"


def test_eta_extrapolates_the_mean_step_time_since_the_start() -> None:
    # 120 of 600 steps in 65 s: 65 / 120 s a step, 480 steps left -> 260 s.
    assert eta_seconds(120, 600, 0, 65.0) == pytest.approx(260.0)
    # Resumed at step 100: 20 steps in 20 s, 480 left -> 480 s.
    assert eta_seconds(120, 600, 100, 20.0) == pytest.approx(480.0)
    assert eta_seconds(600, 600, 0, 300.0) == 0.0
    assert eta_seconds(100, 600, 100, 5.0) is None  # no step timed yet


def test_progress_line() -> None:
    line = progress_line(120, 600, 3.41249, 18.26, 65.0, eta_seconds(120, 600, 0, 65.0))
    assert line == "step 120/600 (20%) | loss 3.412 | 18.3 samples/s | elapsed 1m05s | ETA 4m20s"
    assert progress_line(7, None, None, None, 3.0, None) == "step 7 | elapsed 3s"


PROGRESS = re.compile(
    r"step (\d+)/5 \((\d+)%\) \| loss (\d+\.\d{3}) \| (\d+\.\d) samples/s \| elapsed (\S+) \| ETA (\S+)"
)


def test_fit_without_a_terminal_logs_progress_lines_and_no_known_warnings(
    phantom_overrides: list[str], tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "ctvlp.cli", "fit", "colipri_c", "--profile", "cpu_demo"]
    overrides = [
        *phantom_overrides,
        f"runs_dir={tmp_path / 'runs'}",
        "trainer.max_steps=5",
        "trainer.progress_every_n_steps=2",
        "trainer.val_check_interval=1000",
        "optim.warmup_steps=1",
        "evaluation.final_splits=[]",
        "evaluation.preview_volumes=0",
        "data.num_workers=0",
    ]
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:  # files: not a terminal
        code = subprocess.run([*command, *overrides], stdout=out, stderr=err, timeout=900).returncode
    err_text = stderr.read_text(encoding="utf-8")
    assert code == 0, err_text[-3000:]
    lines = PROGRESS.findall(err_text)
    assert [int(step) for step, *_ in lines] == [2, 4, 5], err_text[-3000:]  # every 2 steps, and the last
    assert [int(percent) for _, percent, *_ in lines] == [40, 80, 100]
    assert all(float(loss) > 0 and float(rate) > 0 for _, _, loss, rate, _, _ in lines)
    assert lines[-1][-1] == "0s"  # nothing left at the last step
    (run,) = (tmp_path / "runs" / "colipri_c").glob("version_*")
    assert PROGRESS.findall((run / "train.log").read_text(encoding="utf-8")) == lines
    assert "\r" not in stdout.read_text(encoding="utf-8")  # no tqdm bar in the log
    assert "torch.jit.interface" not in err_text
    assert "in eval mode at the start of training" not in err_text
