"""Checkpoints are loaded with ``torch.load(weights_only=True)``: a file whose pickle would call
code (a checkpoint from someone else) is refused with one clear line by ``ctvlp eval --ckpt`` and
``ctvlp fit --resume``, and the code does not run; ctvlp's own checkpoints, today's and those of
earlier versions, still load and evaluate."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from ctvlp.cli import main
from ctvlp.config.errors import ConfigError
from ctvlp.run_dir import load_checkpoint_file, read_checkpoint

REFUSED = "holds objects other than tensors and plain data, so it was not loaded"


class _Touch:
    """Unpickling it runs ``touch <marker>``: what a hostile checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {"module": _Touch(marker)}}}, path)
    return path


def test_a_pickled_callable_is_refused_by_the_loader(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = _hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    for load in (read_checkpoint, lambda p: load_checkpoint_file(p, mmap=True)):
        with pytest.raises(ConfigError, match=REFUSED):
            load(checkpoint)
    assert not marker.exists()


def test_eval_refuses_a_hostile_checkpoint_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    checkpoint = _hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    assert main(["eval", "--ckpt", str(checkpoint), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert f"ctvlp eval: error: {checkpoint} {REFUSED}" in err
    assert "only checkpoints written by ctvlp fit are accepted" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_resume_refuses_a_hostile_checkpoint(
    phantom_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "runs" / "colipri_c" / "version_0"
    checkpoint = _hostile_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    arguments = ["fit", "colipri_c", "--profile", "cpu_demo", *phantom_overrides]
    assert main([*arguments, f"runs_dir={tmp_path / 'runs'}", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"ctvlp fit: error: {checkpoint} {REFUSED}" in err and "Traceback" not in err
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # nothing written into the run


def _plain(value: object) -> bool:
    """Tensors and plain data only, as ``weights_only=True`` accepts them."""
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, torch.Tensor | str | int | float | bool)


def _evaluate(checkpoint: Path, out: Path) -> dict[str, float]:
    arguments = ["eval", "--ckpt", str(checkpoint), "--out", str(out), "--no-progress"]
    assert main([*arguments, "--tasks", "retrieval", "--splits", "val"]) == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_a_checkpoint_of_ctvlp_fit_loads_and_evaluates(trained_run: Path, tmp_path: Path) -> None:
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)  # no allow-list needed
    assert _plain(raw)
    # The RNG states (callbacks/rng_state.py) as tensors and lists, numpy's key array included.
    assert isinstance(raw["ctvlp_rng_states"]["numpy"][1], torch.Tensor)
    assert 0 <= _evaluate(checkpoint, tmp_path / "eval")["val/retrieval/R@5"] <= 1


def test_a_checkpoint_of_an_earlier_ctvlp_loads_and_evaluates(
    trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As earlier versions wrote them: module 'contrastive' (now 'colipri'), no trainer keys added
    since, RNG states as RngStateCallback has always stored them (tensors and lists; git log
    callbacks/rng_state.py)."""
    raw = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    config = raw["hyper_parameters"]["config"]
    config["module"] = "contrastive"
    del config["trainer"]["progress_every_n_steps"]
    old = tmp_path / "old_run" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(raw, old)
    with caplog.at_level(logging.WARNING):
        results = _evaluate(old, tmp_path / "eval")
    assert "module: contrastive is now called module: colipri" in caplog.text
    assert 0 <= results["val/retrieval/R@5"] <= 1
