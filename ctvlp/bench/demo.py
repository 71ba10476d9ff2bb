"""``make bench-demo``: the demo fit (cpu_demo profile) before and after its speed-ups, timed in the
same run on the same data.

- before: ``trainer.cpu_keep_freed_memory=false``, ``model.text.frozen_cache_mb=0`` and
  ``data.text.shuffles_per_report=0``: glibc's default allocator (every large activation mapped
  afresh each step), the frozen MiniLM encodes every report of every step in a padded batch, every
  report gets a fresh augmentation draw;
- allocator: freed memory kept for the next step (``ctvlp/cpu_allocator.py``), the text as before;
- text cache: also the frozen text cache, augmentation unlimited (it shows the hit rate the paper's
  sentence shuffle leaves);
- after: what ``make demo`` runs, the profile with the allocator setting (also 2 augmentation
  variants per report, so the cache hits).

``--cases`` picks some. ``--whole-fit`` times ``ctvlp fit`` end to end instead, as ``make demo``
runs it (the profile's 600 steps, validation, periodic and final evaluation): wall and CPU seconds
only. Otherwise each case trains ``--steps`` steps (default 150) through the real Trainer in
a fresh subprocess, with no validation, periodic evaluation or final evaluation. Printed and written
to ``<out>/bench_demo.{json,md}``: seconds per step after ``--warmup`` steps (wall), the case's wall
and CPU seconds (user + system of the subprocess and its data workers, steadier than wall on shared
cores), the text cache's hit rate, and each ratio against "before". Hits grow with the steps: the
first epoch of the stream (75 steps on the 800-scan phantom) meets an empty cache, so a short run
understates the gain of the 600-step demo.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from ctvlp.console import tolerate_ascii_console

NO_CACHE = ["model.text.frozen_cache_mb=0", "data.text.shuffles_per_report=0"]
KEEP = "trainer.cpu_keep_freed_memory=true"  # as make demo asks (off by default)
CASES = {
    "before": ["trainer.cpu_keep_freed_memory=false", *NO_CACHE],
    "allocator": [KEEP, *NO_CACHE],
    "text cache": [KEEP, "data.text.shuffles_per_report=0"],
    "after": [KEEP],
}


@dataclass
class Timing:
    case: str
    steps: int | None  # None: the whole fit (--whole-fit), the profile's steps
    seconds_per_step: float | None  # wall, steps after the warm-up (None: --whole-fit)
    wall_seconds: float  # the whole subprocess: start-up, model load, steps
    cpu_seconds: float  # user + system of the subprocess and its children
    cache_hit_rate: float | None


class StepClock(L.Callback):
    """Wall time from the end of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end = 0.0
        self.timed_steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = now
        elif self.start is not None:
            self.end, self.timed_steps = now, trainer.global_step - self.warmup


def fit_steps(experiment: str, overrides: list[str], warmup: int) -> dict:
    """Train with ``overrides`` (in this process); seconds per step and the text cache's hit rate."""
    from ctvlp.config.loader import load_experiment
    from ctvlp.run_dir import new_run_dir
    from ctvlp.trainer_factory import build_trainer
    from lightning_modules.registry import module_class

    cfg = load_experiment(experiment, "cpu_demo", overrides)
    L.seed_everything(int(cfg.seed), workers=True)
    module_cls = module_class(cfg.module)
    datamodule = module_cls.build_datamodule(cfg)
    module = module_cls(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg, new_run_dir(Path(cfg.runs_dir), cfg.name))
    clock = StepClock(warmup)
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    cache = getattr(getattr(module, "text_encoder", None), "frozen_cache", None)
    return {
        "seconds_per_step": (clock.end - clock.start) / max(clock.timed_steps, 1) if clock.start else 0.0,
        "cache_hit_rate": None if cache is None else cache.hit_rate,
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], name: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``command``; its result, wall seconds and CPU seconds (it and its children)."""
    cpu, wall = _children_cpu_seconds(), time.perf_counter()
    out = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace")
    wall, cpu = time.perf_counter() - wall, _children_cpu_seconds() - cpu
    if out.returncode != 0:
        raise RuntimeError(f"case {name!r} failed:\n{out.stderr[-3000:]}")
    return out, wall, cpu


def run_case(name: str, args: argparse.Namespace, runs_dir: str) -> Timing:
    data = [f"data.root={args.data_root}", f"data.cache_dir={args.cache_dir}", f"runs_dir={runs_dir}"]
    if args.whole_fit:  # `ctvlp fit` as make demo runs it: every step, validation and evaluation
        command = [sys.executable, "-m", "ctvlp.cli", "fit", args.experiment, "--profile", "cpu_demo"]
        _, wall, cpu = _timed([*command, *data, *CASES[name]], name)
        return Timing(name, None, None, wall, cpu, None)
    overrides = [
        *data,
        f"trainer.max_steps={args.steps}",
        "trainer.limit_val_batches=0",
        f"trainer.checkpoint_every_n_steps={args.steps}",
        "evaluation.every_n_steps=0",
        "evaluation.final_splits=[]",
        *CASES[name],
    ]
    case = {"experiment": args.experiment, "overrides": overrides, "warmup": args.warmup}
    out, wall, cpu = _timed([sys.executable, "-m", "ctvlp.bench.demo", "--case", json.dumps(case)], name)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return Timing(name, args.steps, result["seconds_per_step"], wall, cpu, result["cache_hit_rate"])


def table(results: list[Timing]) -> str:
    """The Markdown table; ratios against "before" (else the first case)."""
    base = next((r for r in results if r.case == "before"), results[0])
    lines = [
        f"| case | s/step | wall (s) | CPU (s) | text cache hits | speed-up vs {base.case}: step | wall | CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        hits = "—" if r.cache_hit_rate is None else f"{r.cache_hit_rate:.1%}"
        if r.seconds_per_step is None or base.seconds_per_step is None:
            step, step_ratio = "—", "—"
        else:
            step, step_ratio = (
                f"{r.seconds_per_step:.3f}",
                f"{base.seconds_per_step / r.seconds_per_step:.2f}x",
            )
        lines.append(
            f"| {r.case} | {step} | {r.wall_seconds:.1f} | {r.cpu_seconds:.1f} | {hits} | {step_ratio} | "
            f"{base.wall_seconds / r.wall_seconds:.2f}x | {base.cpu_seconds / r.cpu_seconds:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    tolerate_ascii_console()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="(internal) run one case as JSON and print its timing")
    parser.add_argument(
        "--experiment", default="colipri_crm", help="a COLIPRI experiment (default colipri_crm, the demo's)"
    )
    parser.add_argument("--data-root", default="data/phantom_ct_rate", help="the phantom `make demo` writes")
    parser.add_argument("--cache-dir", default="cache", help="its preprocessed cache (default ./cache)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of s/step")
    parser.add_argument(
        "--whole-fit",
        action="store_true",
        help="time `ctvlp fit` end to end as make demo runs it (the profile's steps, validation, periodic "
        "and final evaluation; wall and CPU only) instead of --steps training steps",
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--out", default="runs/bench", help="where bench_demo.{json,md} go")
    args = parser.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(fit_steps(case["experiment"], case["overrides"], case["warmup"])))
        return 0
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    names = [name.strip() for name in args.cases.split(",")]
    if unknown := [name for name in names if name not in CASES]:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_demo_runs_") as runs_dir:
        for name in names:
            what = "the whole cpu_demo fit" if args.whole_fit else f"{args.steps} steps"
            print(f"  {name}: {what} of {args.experiment} ...", flush=True)
            results.append(run_case(name, args, runs_dir))
    markdown = table(results)
    print()
    print(markdown)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_demo.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8"
    )
    (out / "bench_demo.md").write_text(markdown + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
