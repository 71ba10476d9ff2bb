"""``ctvlp fit`` stops before any compute when an experiment needs an LLM sidecar the data root
lacks, naming ``ctvlp annotate`` and the opt-out; with the opt-out it logs the coverage."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from ctvlp.cli import main
from ctvlp.commands.fit import check_text_sidecars
from ctvlp.config.loader import load_experiment
from datamodules.annotation.inputs import read_items


@pytest.fixture
def bare_root(annotate_root: Path, tmp_path: Path) -> Path:
    """The CT-RATE tables without any sidecar (no volumes: the check runs before the cache build)."""
    root = tmp_path / "bare"
    for folder in ("radiology_text_reports", "multi_abnormality_labels", "metadata"):
        shutil.copytree(annotate_root / folder, root / folder)
    (root / "train_fixed").mkdir()
    (root / "valid_fixed").mkdir()
    return root


def _fit(experiment: str, root: Path, tmp_path: Path, *overrides: str) -> int:
    return main(["fit", experiment, "--profile", "cpu_demo", f"data.root={root}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"runs_dir={tmp_path / 'runs'}", *overrides])  # fmt: skip


def test_fit_without_shortened_findings_stops(bare_root, tmp_path, capsys):
    assert _fit("colipri_c", bare_root, tmp_path) == 2
    err = capsys.readouterr().err
    assert "ctvlp annotate" in err and "data.text.allow_missing_shortened=true" in err
    assert "covers 0 of" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing computed


def test_fit_without_sections_stops_unless_keyword_sections_are_accepted(bare_root, tmp_path, capsys):
    assert _fit("cappa", bare_root, tmp_path) == 2
    err = capsys.readouterr().err
    assert (
        "ctvlp annotate" in err
        and "--tasks sections" in err
        and "data.text.allow_keyword_sections=true" in err
    )


def test_opt_outs_log_the_coverage(bare_root, caplog):
    cfg = load_experiment(
        "colipri_cr",
        "cpu_demo",
        [
            f"data.root={bare_root}",
            "data.text.allow_missing_shortened=true",
            "data.text.allow_keyword_sections=true",
        ],
    )
    total = sum(len(item.volumes) for item in read_items("ct_rate", bare_root))
    with caplog.at_level(logging.INFO, logger="ctvlp.commands.fit"):
        check_text_sidecars(cfg)
    assert f"shorten sidecar: {bare_root}/shortened_findings.json covers 0 of {total}" in caplog.text
    assert "(data.text.allow_missing_shortened=true)" in caplog.text
    assert f"sections sidecar: {bare_root}/structured_findings.json covers 0 of {total}" in caplog.text
    assert "(data.text.allow_keyword_sections=true)" in caplog.text


def test_complete_sidecar_passes(annotate_root, caplog):
    cfg = load_experiment("colipri_c", "cpu_demo", [f"data.root={annotate_root}"])
    with caplog.at_level(logging.INFO, logger="ctvlp.commands.fit"):
        check_text_sidecars(cfg)
    assert "shortened_findings.json covers" in caplog.text and "allow_missing" not in caplog.text
