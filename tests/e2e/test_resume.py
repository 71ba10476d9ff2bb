"""A run killed with SIGKILL mid-training and resumed with RESUME=auto continues at the step it
had reached and ends with weights bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

MAX_STEPS = 30


def _fit(overrides: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ctvlp.cli",
        "fit",
        "colipri_c",
        "--profile",
        "cpu_demo",
        *extra,
        *overrides,
    ]


def _overrides(phantom_overrides: list[str], runs_dir: Path) -> list[str]:
    return [
        *phantom_overrides,
        f"runs_dir={runs_dir}",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.val_check_interval=1000",
        "optim.warmup_steps=5",
        "model.image.drop_path=0.1",  # exercises the RNG state restore
        "evaluation.final_splits=[]",
        "evaluation.preview_volumes=0",
        "data.num_workers=0",
    ]


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def test_sigkilled_run_resumes_bit_identically(phantom_overrides: list[str], tmp_path: Path) -> None:
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.run(
        _fit(_overrides(phantom_overrides, reference_dir)),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    overrides = _overrides(phantom_overrides, killed_dir)
    last = killed_dir / "colipri_c" / "version_0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_fit(overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if last.exists() and _step(last) >= 7:
                break
            time.sleep(0.2)
        assert process.poll() is None, "training finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = _step(last)  # never a truncated file: it loads
    assert 7 <= killed_at < MAX_STEPS

    resumed = subprocess.run(
        _fit(overrides, "--resume", "auto"), capture_output=True, encoding="utf-8", errors="replace"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout
    assert not (killed_dir / "colipri_c" / "version_1").exists()  # the same run directory continues
    assert _step(last) == MAX_STEPS

    expected = _weights(reference_dir / "colipri_c" / "version_0" / "checkpoints" / "last.ckpt")
    actual = _weights(last)
    assert expected.keys() == actual.keys()
    differing = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differing, f"weights differ after resume: {differing[:5]}"
