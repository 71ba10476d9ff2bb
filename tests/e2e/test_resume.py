"""A run killed with SIGKILL mid-training and resumed with RESUME=auto continues at the step it
had reached and ends with weights bit-identical to an uninterrupted run: COLIPRI-C, and GreenRFM
killed in stage 1 and resumed across the boundary into stage 2 (new learning rates, weight decay,
clipping and a fresh AdamW state)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass(frozen=True)
class Case:
    experiment: str
    max_steps: int
    kill_from: int  # kill once last.ckpt has reached this step ...
    kill_before: int  # ... and before this one
    extra: tuple[str, ...] = ()


CASES = [
    Case(
        "colipri_c",
        30,
        7,
        30,
        ("optim.warmup_steps=5", "model.image.drop_path=0.1"),  # drop path: the RNG state restore
    ),
    # 12 steps, stage 2 from step 6: killed at step 3 (stage 1), resumed through the boundary.
    Case("greenrfm", 12, 3, 6),
]


def _fit(experiment: str, overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "ctvlp.cli", "fit", experiment, "--profile", "cpu_demo", *extra, *overrides]


def _overrides(phantom_overrides: list[str], runs_dir: Path, case: Case) -> list[str]:
    return [
        *phantom_overrides,
        f"runs_dir={runs_dir}",
        f"trainer.max_steps={case.max_steps}",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.val_check_interval=1000",
        *case.extra,
        "evaluation.final_splits=[]",
        "evaluation.preview_volumes=0",
        "data.num_workers=0",
    ]


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("case", CASES, ids=[case.experiment for case in CASES])
def test_sigkilled_run_resumes_bit_identically(
    case: Case, phantom_overrides: list[str], tmp_path: Path
) -> None:
    name = case.experiment
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.run(
        _fit(name, _overrides(phantom_overrides, reference_dir, case)),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    overrides = _overrides(phantom_overrides, killed_dir, case)
    last = killed_dir / name / "version_0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_fit(name, overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if last.exists() and _step(last) >= case.kill_from:
                break
            time.sleep(0.2)
        assert process.poll() is None, "training finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = _step(last)  # never a truncated file: it loads
    assert case.kill_from <= killed_at < case.kill_before

    resumed = subprocess.run(
        _fit(name, overrides, "--resume", "auto"), capture_output=True, encoding="utf-8", errors="replace"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout
    assert not (killed_dir / name / "version_1").exists()  # the same run directory continues
    assert _step(last) == case.max_steps

    expected = _weights(reference_dir / name / "version_0" / "checkpoints" / "last.ckpt")
    actual = _weights(last)
    assert expected.keys() == actual.keys()
    differing = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differing, f"weights differ after resume: {differing[:5]}"
