"""``make bench-gpu``: the image towers of COLIPRI (Primus-M, 160^3) and GreenRFM (3D ResNet-18,
192 x 192 x 96) with each recipe's own per-GPU batch and precision (bf16-mixed), activation
checkpointing on and off, ``torch.compile`` on and off: the SDPA attention kernel in use, s/step,
samples/s, MFU and peak memory, written as JSON and a Markdown table.

It needs a CUDA GPU; ``--smoke`` runs a tiny configuration (tiny Primus and the Lite R3D-18 at
16^3, batch 2, fp32, 2 steps, one thread, ``torch.compile`` with the eager backend) through the same
code on a CPU, so that the code path is tested without one.

Each configuration runs in a fresh subprocess (``ctvlp.bench.train``'s runner), so that peak memory
belongs to it alone. The step is ``bench-train``'s (forward, mean-square of the pooled embedding,
backward, AdamW); FLOPs are the model's forward + backward counted on the meta device (no
recompute, so MFU does not credit checkpointing's second forward). The attention kernel is the SDPA
operator that the profiler records during one training step of the configuration as measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ctvlp.bench.train import (
    Case,
    _device,
    _encoder,
    _shape,
    _sync,
    _timed,
    meta_flops,
    model_flops_utilisation,
    peak_memory_gb,
    run_case_subprocess,
)
from ctvlp.config.batch import plan_from_data
from ctvlp.config.loader import load_experiment
from ctvlp.console import tolerate_ascii_console

NO_GPU_MESSAGE = (
    "make bench-gpu measures CUDA kernels, MFU and GPU memory, but torch.cuda.is_available() is False "
    "on this machine. Run it on a GPU, or pass --smoke (ARGS=--smoke) for the tiny CPU configuration "
    "that only tests the code path."
)

# The aten operators behind F.scaled_dot_product_attention, by the kernel they run.
SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (backend override)",
    "aten::_scaled_dot_product_attention_math": "math",
}


@dataclass
class GpuCase:
    name: str
    arch: str  # "primus" or "r3d_18"
    size: str  # Primus size; for r3d_18 the stem ("2" GreenRFM, "4" Lite)
    input_size: int | list[int]
    batch: int
    precision: str  # Lightning's name: "bf16-mixed" or "32-true"
    checkpointing: bool
    compile: bool
    steps: int
    warmup: int
    compile_backend: str = "inductor"
    threads: int | None = None  # CPU threads (the smoke run: 1); None keeps torch's default
    source: str = ""  # where batch, crop and precision come from


@dataclass
class GpuMeasurement:
    case: str
    arch: str
    input_size: int | list[int]
    batch: int
    precision: str
    checkpointing: bool
    compile: bool
    attention_kernel: str
    flops_per_sample: float
    seconds_per_step: float | None
    samples_per_second: float | None
    tflops: float | None
    mfu: float | None
    peak_memory_gb: float | None
    error: str | None = None


class _Checkpointed(nn.Module):
    """Activation checkpointing of one ResNet stage (torchvision's r3d_18 has none of its own)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)


def build_encoder(case: GpuCase) -> nn.Module:
    """``bench-train``'s tower for ``case``; Primus checkpoints its Eva blocks, R3D-18 its 4 stages.

    In the checkpointed stages BatchNorm's step counter is dropped: with a momentum set it is
    unused, and its in-place increment, replayed by the recompute, makes the compiled backward
    fail ("modified by an inplace operation")."""
    encoder, _, _ = _encoder(_train_case(case))
    if case.checkpointing and case.arch == "r3d_18":
        trunk = encoder.trunk
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for module in getattr(trunk, stage).modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
                    module.num_batches_tracked = None
            setattr(trunk, stage, _Checkpointed(getattr(trunk, stage)))
    return encoder


def _train_case(case: GpuCase) -> Case:
    return Case(
        case.name,
        case.size,
        case.input_size,
        case.batch,
        checkpointing=case.checkpointing and case.arch == "primus",
        arch=case.arch,
    )


def attention_kernels(op_names: set[str]) -> str:
    """The SDPA kernel(s) among the profiled operator names; "none" without attention."""
    found = sorted({label for op, label in SDPA_KERNELS.items() if op in op_names})
    return ", ".join(found) if found else "none"


def _profiled_attention_kernel(step, device: torch.device, case: GpuCase) -> str:
    """The SDPA kernel of one profiled ``step`` (aten operators are recorded host-side, whatever
    the device). Compiled code that inlines attention calls no SDPA operator: said so."""
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
            _sync(device)
    except RuntimeError as error:  # a profiler that cannot start must not cost the measurement
        return f"unknown (profiler: {str(error).splitlines()[0][:80]})"
    kernel = attention_kernels({event.key for event in prof.key_averages()})
    if kernel == "none" and case.arch == "primus":
        return "no SDPA operator (generated by torch.compile)"
    return kernel


def measure(case: GpuCase) -> GpuMeasurement:
    device = _device()
    if case.threads:
        torch.set_num_threads(case.threads)
    mixed = case.precision == "bf16-mixed"
    encoder = build_encoder(case).to(device).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    model = torch.compile(encoder, backend=case.compile_backend) if case.compile else encoder
    images = torch.randn(case.batch, 1, *_shape(case.input_size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
            loss = model(images).pooled.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = _unmeasured(case)
    flops = result.flops_per_sample * case.batch
    try:
        step()  # compiles (when compiled) outside the profile and the timing
        result.attention_kernel = _profiled_attention_kernel(step, device, case)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = _timed(step, device, warmup=case.warmup, repeats=case.steps)
    except torch.OutOfMemoryError as error:
        result.error = f"out of memory: {str(error).splitlines()[0]}"
        return result
    achieved = flops / seconds
    result.seconds_per_step = seconds
    result.samples_per_second = case.batch / seconds
    result.tflops = achieved / 1e12
    result.mfu = model_flops_utilisation(achieved, device)
    result.peak_memory_gb = peak_memory_gb(device)
    return result


def _variants(base: dict) -> list[GpuCase]:
    """``base`` with activation checkpointing and torch.compile each on and off."""
    cases = []
    for checkpointing in (False, True):
        for compiled in (False, True):
            flags = ["act. ckpt" if checkpointing else "no ckpt", "compile" if compiled else "eager"]
            cases.append(
                GpuCase(
                    name=f"{base['label']}, {', '.join(flags)}",
                    checkpointing=checkpointing,
                    compile=compiled,
                    **{k: v for k, v in base.items() if k != "label"},
                )
            )
    return cases


def gpu_cases(steps: int, warmup: int) -> list[GpuCase]:
    """COLIPRI's Primus-M (experiments/colipri_c.yaml with the a100x4 profile: the paper's per-GPU
    batch) and GreenRFM's R3D-18 (experiments/greenrfm.yaml: one GPU), each with its own crop,
    batch and precision."""
    colipri = load_experiment("colipri_c", "a100x4", ["data.root=unused"])
    green = load_experiment("greenrfm", None, ["data.root=unused"])
    # The per-GPU batch on the profile's devices: the global batch split as `ctvlp fit` splits it.
    t = colipri.trainer
    plan = plan_from_data(colipri.data, int(t.accumulate_grad_batches), int(t.devices), int(t.num_nodes))
    colipri.data.batch_size = plan.per_device
    image = colipri.model.image
    crop = colipri.data.crop_size
    green_crop = list(green.data.crop_size)
    bases = [
        dict(
            label=f"COLIPRI Primus-{image.size} {crop}^3 b{colipri.data.batch_size}",
            arch="primus",
            size=str(image.size),
            input_size=crop,
            batch=int(colipri.data.batch_size),
            precision=str(colipri.trainer.precision),
            source="experiments/colipri_c.yaml + profiles/a100x4.yaml (batch per GPU)",
        ),
        dict(
            label=f"GreenRFM r3d_18 {'x'.join(map(str, green_crop))} b{green.data.batch_size}",
            arch="r3d_18",
            size=str(green.model.image.stem),
            input_size=green_crop,
            batch=int(green.data.batch_size),
            precision=str(green.trainer.precision),
            source="experiments/greenrfm.yaml (one GPU)",
        ),
    ]
    return [c for b in bases for c in _variants({**b, "steps": steps, "warmup": warmup})]


def smoke_cases() -> list[GpuCase]:
    """The same matrix at toy size on a CPU: fp32, 2 timed steps, compile with the eager backend."""
    common = dict(
        input_size=16, batch=2, precision="32-true", steps=2, warmup=0, compile_backend="eager", threads=1
    )
    bases = [
        dict(label="smoke: tiny Primus 16^3 b2", arch="primus", size="tiny", source="--smoke", **common),
        dict(label="smoke: r3d_18 (Lite stem) 16^3 b2", arch="r3d_18", size="4", source="--smoke", **common),
    ]
    return [c for b in bases for c in _variants(b)]


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table(results: list[GpuMeasurement]) -> str:
    lines = [
        "| case | attention kernel | s/step | samples/s | TFLOP/s | MFU | peak mem (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.case} | {r.attention_kernel} | {r.error} | | | | |")
            continue
        lines.append(
            f"| {r.case} | {r.attention_kernel} | {_cell(r.seconds_per_step, '.3f')} | "
            f"{_cell(r.samples_per_second, '.2f')} | {_cell(r.tflops, '.2f')} | {_cell(r.mfu, '.1%')} | "
            f"{_cell(r.peak_memory_gb, '.2f')} |"
        )
    return "\n".join(lines)


def _environment(device: torch.device) -> dict:
    backends = torch.backends.cuda
    return {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sdpa_backends_enabled": {
            "flash": backends.flash_sdp_enabled(),
            "memory_efficient": backends.mem_efficient_sdp_enabled(),
            "cudnn": backends.cudnn_sdp_enabled(),
            "math": backends.math_sdp_enabled(),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _unmeasured(case: GpuCase) -> GpuMeasurement:
    """The row of ``case`` before (or without) a measurement: its model FLOPs per sample only."""
    return GpuMeasurement(
        case.name,
        case.arch,
        case.input_size,
        case.batch,
        case.precision,
        case.checkpointing,
        case.compile,
        "not measured",
        meta_flops(_train_case(case)) / case.batch,
        None,
        None,
        None,
        None,
        None,
    )


def _run(case: GpuCase) -> GpuMeasurement:
    try:
        return GpuMeasurement(**run_case_subprocess("ctvlp.bench.gpu", asdict(case)))
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or "").strip().splitlines()[-1:] or [f"exit status {error.returncode}"]
        result = _unmeasured(case)
        result.error = f"failed: {tail[0][:200]}"
        return result


def main(argv: list[str] | None = None) -> int:
    tolerate_ascii_console()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="(internal) run one case as JSON and print its measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU configuration (tests the code path)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="directory for the JSON and .md")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (GPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them (GPU)")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(asdict(measure(GpuCase(**json.loads(args.case))))))
        return 0
    device = _device()
    if device.type != "cuda" and not args.smoke:
        print(f"bench-gpu: error: {NO_GPU_MESSAGE}", file=sys.stderr)
        return 2
    cases = smoke_cases() if args.smoke else gpu_cases(args.steps, args.warmup)
    environment = _environment(device)
    print(f"device: {environment['device']}, torch {environment['torch']}", flush=True)
    results = []
    for case in cases:
        print(f"  measuring {case.name} ...", flush=True)
        results.append(_run(case))
    markdown = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_gpu_smoke" if args.smoke else "bench_gpu"
    report = {
        **environment,
        "smoke": args.smoke,
        "cases": [asdict(c) for c in cases],
        "results": [asdict(r) for r in results],
    }
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    header = f"{environment['device']}, torch {environment['torch']}, {environment['date']}"
    md_path.write_text(
        f"# make bench-gpu{' --smoke' if args.smoke else ''}\n\n{header}\n\n{markdown}\n", encoding="utf-8"
    )
    print()
    print(markdown)
    print(f"\nWrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
