"""Which checkpoint a run directory stands for in `ctvlp eval --ckpt RUN` (ctvlp/run_dir.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ctvlp.config.errors import ConfigError
from ctvlp.run_dir import resolve_checkpoint


def _run(tmp_path: Path, module: str, *checkpoints: str) -> Path:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text(f"name: x\nmodule: {module}\n", encoding="utf-8")
    for name in checkpoints:
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    return tmp_path


def test_a_module_that_selects_on_validation_is_evaluated_with_its_best_checkpoint(tmp_path: Path) -> None:
    run = _run(tmp_path, "uniferum", "last.ckpt", "best-step800.ckpt")
    assert resolve_checkpoint(run) == run / "checkpoints" / "best-step800.ckpt"


def test_other_modules_are_evaluated_with_their_last_checkpoint(tmp_path: Path) -> None:
    run = _run(tmp_path, "colipri", "last.ckpt", "best-step800.ckpt")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"


def test_without_a_best_checkpoint_the_last_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = _run(tmp_path, "uniferum", "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="ctvlp.run_dir"):
        assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert "has no best checkpoint" in caplog.text


def test_several_best_checkpoints_are_ambiguous(tmp_path: Path) -> None:
    run = _run(tmp_path, "uniferum", "last.ckpt", "best-step2.ckpt", "best-step4.ckpt")
    with pytest.raises(ConfigError, match="several best checkpoints .*best-step2.ckpt, best-step4.ckpt"):
        resolve_checkpoint(run)


def test_a_missing_checkpoint_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        resolve_checkpoint(tmp_path / "missing.ckpt")
