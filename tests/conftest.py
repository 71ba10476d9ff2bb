"""Shared fixtures: one small phantom CT-RATE and its 6 mm cache per test session, and a small
phantom image-only collection for the experiments that mix one in (cached on first use)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from datamodules.cache import cache_path  # noqa: E402
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate  # noqa: E402
from datamodules.phantom.image_only_writer import write_phantom_image_only  # noqa: E402
from datamodules.phantom.merlin_writer import write_phantom_merlin  # noqa: E402
from datamodules.phantom.msd_writer import write_phantom_msd  # noqa: E402
from datamodules.preprocess import build_cache  # noqa: E402
from datamodules.sources.ct_rate import scan_ct_rate  # noqa: E402

# 300 scans, as many as the learning check needs: on 120 (about 76 training volumes) the model
# memorises its training pairs (the training loss falls, validation retrieval does not move).
PHANTOM_SCANS = 300
PHANTOM_IMAGE_ONLY_PATIENTS = 6
MERLIN_N = 10
MSD_LIVER_N = 10  # 5 folds: 2 test cases, 1 validation case, 7 training cases
INSPECT_N = 12  # 8 train (2 of them quarantined), 2 valid, 2 test studies
DEMO_SPACING = 6.0
# 400 steps: the contrastive loss sits at ln(batch) for the first ~200 (cpu_demo.yaml), so a
# shorter run has learned nothing to assert on. About 3 min on 2 idle cores.
# The paper's text augmentation (a fresh draw every step), not cpu_demo's two per report (the demo's
# frozen-text cache hits): the learning checks hold the recipe. On this phantom, same steps and
# seed: unbounded val MnR 7.13 (chance 12), test native zero-shot AUROC 0.597; two per report
# 7.87 and 0.580.
TRAINED_RUN_OVERRIDES = [
    "data.text.shuffles_per_report=0",
    "trainer.max_steps=400",
    "trainer.val_check_interval=100",
    "evaluation.every_n_steps=200",
]


@pytest.fixture(scope="session")
def one_torch_thread() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``with one_torch_thread(): ...``: torch on one CPU thread inside the block, the count restored
    after (small tensors on 2 shared cores only wait for each other with more); a fixture, as the
    test folders are not packages."""
    import torch

    from lightning_modules.nets.frozen_text_cache import one_cpu_thread

    return lambda: one_cpu_thread(torch.device("cpu"))


@pytest.fixture(scope="session")
def merlin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom Merlin (abdominal CT, 30 labels with -1), for the Merlin sources and recipes."""
    root = tmp_path_factory.mktemp("phantoms") / "merlin"
    write_phantom_merlin(root, MERLIN_N, seed=0, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def phantom_inspect_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom INSPECT (CTPA, PE and outcome labels), for the recipes that mix it in."""
    from datamodules.phantom.inspect_writer import write_phantom_inspect

    root = tmp_path_factory.mktemp("phantoms") / "inspect"
    write_phantom_inspect(root, INSPECT_N, seed=0, scale=0.5, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def msd_liver_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom liver dataset in the nnU-Net raw / MSD layout, for the segmentation recipe."""
    root = tmp_path_factory.mktemp("msd") / "liver"
    write_phantom_msd(root, MSD_LIVER_N, "liver", seed=0, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "ct_rate"
    write_phantom_ct_rate(root, n=PHANTOM_SCANS, seed=0, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def phantom_cache_dir(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache_dir = tmp_path_factory.mktemp("cache")
    scan = scan_ct_rate(phantom_root)
    build_cache(
        scan.records,
        cache_path(cache_dir, "ct_rate", DEMO_SPACING, "paper"),
        spacing=DEMO_SPACING,
        interpolation="paper",
        workers=2,
        progress=False,
        rejected=scan.rejected,
        source_root=phantom_root,
    )
    return cache_dir


@pytest.fixture(scope="session")
def phantom_image_only_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NLST-style phantom (about 9 acquisitions); `ctvlp fit` caches it when an experiment uses it."""
    root = tmp_path_factory.mktemp("phantom_image_only") / "nlst"
    write_phantom_image_only(root, PHANTOM_IMAGE_ONLY_PATIENTS, seed=0, n_dicom=1, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def phantom_overrides(
    phantom_root: Path, phantom_cache_dir: Path, phantom_image_only_root: Path
) -> list[str]:
    """Overrides that point the cpu_demo profile at the session phantoms."""
    return [
        f"data.root={phantom_root}",
        f"data.cache_dir={phantom_cache_dir}",
        "data.val_patients=20",
        f"data.image_only_root={phantom_image_only_root}",
    ]


@pytest.fixture(scope="session")
def trained_run(phantom_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short cpu_demo COLIPRI-C run through the real CLI, shared by the tests that read it."""
    from ctvlp.cli import main

    runs_dir = tmp_path_factory.mktemp("runs")
    arguments = ["fit", "colipri_c", "--profile", "cpu_demo", *phantom_overrides, f"runs_dir={runs_dir}"]
    assert main([*arguments, *TRAINED_RUN_OVERRIDES]) == 0
    (run,) = sorted((runs_dir / "colipri_c").glob("version_*"))
    return run


@pytest.fixture(scope="session")
def tiny_lm(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ctvlp tiny-lm` on the session phantom's training reports: a random Qwen2 with a BPE
    tokenizer, the LM of the report-generation recipes on CPU."""
    from ctvlp.cli import main

    out = tmp_path_factory.mktemp("tiny_lm")
    reports = phantom_root / "radiology_text_reports" / "train_reports.csv"
    assert main(["tiny-lm", "--reports", str(reports), "--out", str(out)]) == 0
    return out
