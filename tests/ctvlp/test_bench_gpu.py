"""``make bench-gpu`` (``python -m ctvlp.bench.gpu``): the smoke run goes through the real entry
and every configuration of the GPU matrix on a CPU; without ``--smoke`` a CPU is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctvlp.bench.gpu import NO_GPU_MESSAGE, SDPA_KERNELS, attention_kernels, gpu_cases

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctvlp.bench.gpu", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
        encoding="utf-8",
        errors="replace",
    )


def test_the_gpu_matrix_follows_the_recipes() -> None:
    cases = gpu_cases(steps=10, warmup=3)
    assert len(cases) == 8
    primus = [c for c in cases if c.arch == "primus"]
    r3d = [c for c in cases if c.arch == "r3d_18"]
    assert {(c.size, c.input_size, c.batch, c.precision) for c in primus} == {("M", 160, 4, "bf16-mixed")}
    assert {(c.size, tuple(c.input_size), c.batch, c.precision) for c in r3d} == {
        ("2", (192, 192, 96), 10, "bf16-mixed")
    }
    for group in (primus, r3d):
        assert {(c.checkpointing, c.compile) for c in group} == {(a, b) for a in (0, 1) for b in (0, 1)}
        assert all(c.compile_backend == "inductor" and c.threads is None for c in group)


def test_attention_kernel_names() -> None:
    assert attention_kernels({"aten::mm", "aten::_scaled_dot_product_flash_attention"}) == "flash"
    assert attention_kernels({"aten::_scaled_dot_product_efficient_attention"}) == "memory-efficient"
    assert attention_kernels({"aten::_scaled_dot_product_attention_math"}) == "math"
    assert attention_kernels({"aten::convolution"}) == "none"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_a_cpu_is_refused_without_smoke(tmp_path: Path) -> None:
    result = _bench("--out", str(tmp_path))
    assert result.returncode == 2
    assert NO_GPU_MESSAGE in result.stderr and "--smoke" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # eight subprocesses, ~3 min on 2 cores
def test_smoke_runs_every_configuration_and_writes_json_and_markdown(tmp_path: Path) -> None:
    result = _bench("--smoke", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu_smoke.json").read_text(encoding="utf-8"))
    assert report["smoke"] is True and report["torch"] == torch.__version__
    assert set(report["sdpa_backends_enabled"]) == {"flash", "memory_efficient", "cudnn", "math"}
    results = report["results"]
    assert len(results) == 8
    assert {(r["arch"], r["checkpointing"], r["compile"]) for r in results} == {
        (arch, ckpt, compiled)
        for arch in ("primus", "r3d_18")
        for ckpt in (False, True)
        for compiled in (False, True)
    }
    for r in results:
        assert r["error"] is None, r
        assert r["precision"] == "32-true" and r["batch"] == 2 and r["input_size"] == 16
        assert r["seconds_per_step"] > 0 and r["flops_per_sample"] > 0 and r["peak_memory_gb"] > 0
        assert r["samples_per_second"] == pytest.approx(2 / r["seconds_per_step"])
        assert r["mfu"] is None  # no GPU peak to divide by
        # The tiny Primus' attention goes through an SDPA kernel (here "flash (CPU)"); the ResNet has none.
        if r["arch"] == "r3d_18":
            assert r["attention_kernel"] == "none"
        else:
            assert r["attention_kernel"] in SDPA_KERNELS.values()
    markdown = (tmp_path / "bench_gpu_smoke.md").read_text(encoding="utf-8")
    assert "| case | attention kernel | s/step | samples/s | TFLOP/s | MFU | peak mem (GiB) |" in markdown
    for r in results:
        assert f"| {r['case']} | {r['attention_kernel']} | {r['seconds_per_step']:.3f} |" in markdown
    assert str(tmp_path / "bench_gpu_smoke.json") in result.stdout
