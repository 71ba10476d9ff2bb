"""Sweep launchers: ``local`` (sequential subprocesses, resumable) and ``slurm`` (submitit)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ctvlp.sweep.spec import SweepRun, SweepSpec


def run_dir_of(sweep_dir: Path, run: SweepRun) -> Path:
    return sweep_dir / run.run_id


def is_finished(sweep_dir: Path, run: SweepRun) -> bool:
    return any((run_dir_of(sweep_dir, run)).glob("version_*/results.json"))


def fit_command(spec: SweepSpec, run: SweepRun, sweep_dir: Path) -> list[str]:
    """The ``ctvlp fit`` command line of one run (each run is its own process: a crash or a
    leak in one run cannot take the sweep down)."""
    command = [sys.executable, "-m", "ctvlp.cli", "fit", spec.base]
    if spec.profile:
        command += ["--profile", spec.profile]
    return [*command, *spec.overrides, *run.overrides, f"runs_dir={sweep_dir}", f"name={run.run_id}"]


def launch_local(spec: SweepSpec, runs: list[SweepRun], sweep_dir: Path) -> dict[str, str]:
    """Run every unfinished run in turn; returns ``run_id -> status``."""
    status: dict[str, str] = {}
    for number, run in enumerate(runs, start=1):
        prefix = f"[{number}/{len(runs)}] {run.run_id}"
        if is_finished(sweep_dir, run):
            print(f"{prefix}: finished earlier, skipped", flush=True)
            status[run.run_id] = "skipped"
            continue
        print(f"{prefix}: running  ({' '.join(run.overrides) or 'base configuration'})", flush=True)
        log_path = sweep_dir / f"{run.run_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with log_path.open("w", encoding="utf-8") as log:
            code = subprocess.call(fit_command(spec, run, sweep_dir), stdout=log, stderr=subprocess.STDOUT)
        minutes = (time.monotonic() - start) / 60
        status[run.run_id] = "done" if code == 0 else f"failed (exit {code}, see {log_path})"
        print(f"{prefix}: {status[run.run_id]} in {minutes:.1f} min", flush=True)
    return status


def slurm_parameters(options: dict[str, Any], devices: Any, num_nodes: int) -> dict[str, Any]:
    """submitit parameters: one task per GPU (Lightning's SLURM environment picks them up), then
    ``options`` (a spec's ``slurm`` mapping) over them."""
    gpus = int(devices) if str(devices).isdigit() else 1
    parameters: dict[str, Any] = {
        "nodes": num_nodes,
        "tasks_per_node": gpus,
        "gpus_per_node": gpus,
        "cpus_per_task": 8,
        "timeout_min": 72 * 60,
    }
    parameters.update(options)
    return parameters


def launch_slurm(
    spec: SweepSpec, runs: list[SweepRun], sweep_dir: Path, devices: Any, num_nodes: int
) -> dict[str, str]:
    """Submit one SLURM job per unfinished run through submitit."""
    import submitit  # imported here: the local launcher never needs it

    executor = submitit.AutoExecutor(folder=sweep_dir / "slurm")
    parameters = slurm_parameters(spec.slurm, devices, num_nodes)
    # Generic submitit keys (nodes, gpus_per_node, ...) plus any slurm_* key from the spec.
    executor.update_parameters(**parameters)
    status: dict[str, str] = {}
    for run in runs:
        if is_finished(sweep_dir, run):
            status[run.run_id] = "skipped"
            continue
        command = fit_command(spec, run, sweep_dir)
        job = executor.submit(submitit.helpers.CommandFunction(command))
        status[run.run_id] = f"submitted job {job.job_id}"
        print(f"{run.run_id}: {status[run.run_id]}  ({shlex.join(command[3:])})", flush=True)
    return status
