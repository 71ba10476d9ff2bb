"""``make bench-train``: training-step throughput, FLOP/s against a same-run GEMM baseline,
peak memory, activation checkpointing and input-size scaling of the Primus image tower; and
GreenRFM's "green" claim as measured ratios (``--green``): its 3D ResNet-18 (and the Lite stem) at
192 x 192 x 96 against COLIPRI's Primus-M at 160^3, batch 2 each, in FLOPs per sample, s/step and
peak memory.

Every measurement runs in a fresh subprocess so that peak memory (``ru_maxrss`` on CPU,
``max_memory_allocated`` on GPU) belongs to that configuration alone. FLOPs are counted with
``torch.utils.flop_counter`` on one forward+backward; achieved FLOP/s are reported as a ratio to
the FLOP/s of a plain matmul of similar size measured in the same run (and, on a GPU, as MFU
against the card's bf16 peak).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from ctvlp.console import tolerate_ascii_console
from lightning_modules.nets.greenrfm_encoders import GreenRFMImageEncoder
from lightning_modules.nets.image_encoder import build_image_encoder
from lightning_modules.nets.primus_encoder import set_activation_checkpointing
from lightning_modules.nets.r3d_encoder import build_r3d_encoder

# Dense bf16 peak FLOP/s of common cards, for MFU.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


@dataclass
class Case:
    name: str
    size: str  # Primus size; for arch r3d_18 the stem ("2" GreenRFM, "4" Lite)
    input_size: int | list[int]  # an edge (cube) or [x, y, z]
    batch: int
    checkpointing: bool = False
    arch: str = "primus"
    repeats: int = 3
    # Count FLOPs on the meta device without checkpointing (the model's own forward + backward, no
    # recompute, no memory) instead of during the first real step.
    flops_on_meta: bool = False


@dataclass
class Measurement:
    case: str
    flops_per_sample: float
    seconds_per_step: float
    samples_per_second: float
    tflops: float
    gemm_ratio: float
    mfu: float | None
    peak_memory_gb: float


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_flops_utilisation(flops_per_second: float, device: torch.device) -> float | None:
    """Achieved FLOP/s over the card's dense bf16 peak; None on a CPU or an unlisted card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    return flops_per_second / peak if peak else None


def peak_memory_gb(device: torch.device) -> float:
    """``max_memory_allocated`` on a GPU; on a CPU the process's max RSS (interpreter included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def run_case_subprocess(module: str, case: dict) -> dict:
    """``python -m module --case JSON`` in a fresh process (its own peak memory); its last stdout line."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--case", json.dumps(case)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def gemm_flops_per_second(tokens: int, dim: int, device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of (tokens x dim) @ (dim x 4·dim), the shape of a ViT MLP matmul."""
    a = torch.randn(tokens, dim, device=device, dtype=dtype)
    b = torch.randn(dim, 4 * dim, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * tokens * dim * 4 * dim / seconds


def _shape(input_size: int | list[int]) -> tuple[int, int, int]:
    return (input_size,) * 3 if isinstance(input_size, int) else tuple(input_size)  # type: ignore[return-value]


def _encoder(case: Case) -> tuple[torch.nn.Module, int, int]:
    """The image tower of ``case``, its token count per sample and token width (for the GEMM)."""
    shape = _shape(case.input_size)
    if case.arch == "r3d_18":
        encoder = GreenRFMImageEncoder(build_r3d_encoder(int(case.size)), latent_dim=768)
        tokens = math.prod(s // int(case.size) for s in shape)  # positions after the stem
        return encoder, tokens, 64
    encoder = build_image_encoder(case.size, shape, patch_size=8, proj_dim=768, pool_heads=12, drop_path=0.0)
    if case.checkpointing:
        set_activation_checkpointing(encoder.backbone, True)
    return encoder, math.prod(s // 8 for s in shape), encoder.embed_dim


def meta_flops(case: Case) -> float:
    """Forward + backward FLOPs of ``case`` counted on the meta device: shapes only, so a
    configuration too large for this machine's memory is still counted exactly."""
    with torch.device("meta"):
        encoder, _, _ = _encoder(replace(case, checkpointing=False))
        images = torch.randn(case.batch, 1, *_shape(case.input_size))
    with FlopCounterMode(display=False) as counter:
        encoder(images).pooled.float().square().mean().backward()
    return float(counter.get_total_flops())


def measure(case: Case) -> Measurement:
    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    encoder, tokens, width = _encoder(case)
    encoder.to(device).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    images = torch.randn(case.batch, 1, *_shape(case.input_size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = encoder(images).pooled.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if case.flops_on_meta:
        flops = meta_flops(case)  # the warm-up is _timed's (none for a single CPU step)
    else:
        with FlopCounterMode(display=False) as counter:
            step()  # also the warm-up of the timed steps
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timed(step, device, warmup=1 if case.repeats > 1 else 0, repeats=case.repeats)
    gemm = gemm_flops_per_second(case.batch * tokens, width, device, dtype)
    achieved = flops / seconds
    return Measurement(
        case.name,
        flops / case.batch,
        seconds,
        case.batch / seconds,
        achieved / 1e12,
        achieved / gemm,
        model_flops_utilisation(achieved, device),
        peak_memory_gb(device),
    )


def green_cases(device: torch.device) -> list[Case]:
    """GreenRFM's towers at its crop against COLIPRI's at its own, batch 2 (COLIPRI first: the
    baseline of the ratios). FLOPs are counted on the meta device, without recompute.

    On a CPU: one timed step each, no warm-up, and Primus-M with activation checkpointing, because without it
    the attention of its 8,000 tokens keeps over 20 GiB for the backward at batch 2 (its time then
    includes a second forward: the time ratios favour COLIPRI by up to ~1.3x)."""
    cpu = device.type != "cuda"
    repeats = 1 if cpu else 3
    crop = [192, 192, 96]
    name = "COLIPRI Primus-M 160^3 b2" + (" (act. ckpt)" if cpu else "")
    return [
        Case(name, "M", 160, 2, checkpointing=cpu, repeats=repeats, flops_on_meta=True),
        Case(
            "GreenRFM r3d_18 192x192x96 b2", "2", crop, 2, arch="r3d_18", repeats=repeats, flops_on_meta=True
        ),
        Case(
            "GreenRFM-Lite r3d_18 192x192x96 b2",
            "4",
            crop,
            2,
            arch="r3d_18",
            repeats=repeats,
            flops_on_meta=True,
        ),
    ]


def green_table(results: list[Measurement]) -> str:
    base = results[0]
    lines = [
        f"| case | GFLOP/sample | s/step | peak mem (GiB) | FLOPs vs {base.case} | time | memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.flops_per_sample / 1e9:.0f} | {r.seconds_per_step:.2f} | {r.peak_memory_gb:.2f} | "
            f"{r.flops_per_sample / base.flops_per_sample:.3f}x | {r.seconds_per_step / base.seconds_per_step:.3f}x | "
            f"{r.peak_memory_gb / base.peak_memory_gb:.3f}x |"
        )
    return "\n".join(lines)


def default_cases(device: torch.device) -> list[Case]:
    if device.type == "cuda":
        return [
            Case("small: S 96^3 b4", "S", 96, 4),
            Case("medium: M 160^3 b4", "M", 160, 4),
            Case("medium + act. ckpt", "M", 160, 4, checkpointing=True),
            *[Case(f"scaling: M {s}^3 b2", "M", s, 2) for s in (96, 128, 160)],
        ]
    return [
        Case("small: tiny 64^3 b4", "tiny", 64, 4),
        Case("medium: S 64^3 b2", "S", 64, 2),
        Case("medium + act. ckpt", "S", 64, 2, checkpointing=True),
        *[Case(f"scaling: tiny {s}^3 b1", "tiny", s, 1) for s in (96, 128, 160)],
    ]


def table(results: list[Measurement]) -> str:
    lines = [
        "| case | s/step | samples/s | TFLOP/s | ratio to GEMM | MFU | peak mem (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mfu = "—" if r.mfu is None else f"{r.mfu:.1%}"
        lines.append(
            f"| {r.case} | {r.seconds_per_step:.3f} | {r.samples_per_second:.2f} | {r.tflops:.3f} | "
            f"{r.gemm_ratio:.1%} | {mfu} | {r.peak_memory_gb:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    tolerate_ascii_console()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="(internal) run one case as JSON and print its measurement")
    parser.add_argument(
        "--green",
        action="store_true",
        help="GreenRFM and GreenRFM-Lite against COLIPRI's Primus-M (FLOPs, time, memory, ratios)",
    )
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(asdict(measure(Case(**json.loads(args.case))))))
        return 0
    device = _device()
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    cases = green_cases(device) if args.green else default_cases(device)
    results = []
    for case in cases:
        print(f"  measuring {case.name} ...", flush=True)
        results.append(Measurement(**run_case_subprocess("ctvlp.bench.train", asdict(case))))
    print()
    print(green_table(results) if args.green else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
