"""``annotate``: read the reports, run the tasks, write each task's sidecar from the progress log."""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from datamodules.annotation import sidecars
from datamodules.annotation.backends import open_backend
from datamodules.annotation.inputs import id_column, label_names, read_items
from datamodules.annotation.prompts import TASKS, Task
from datamodules.annotation.runner import Counts, Runner, read_progress

log = logging.getLogger(__name__)


@dataclass
class AnnotateOptions:
    source: str
    root: Path
    tasks: tuple[str, ...]
    llm: str
    model: str | None = None
    out: Path | None = None
    concurrency: int = 8
    limit: int | None = None
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    max_tokens: int = 2048
    progress_bar: bool = True
    retry_failed: bool = False


def parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    return tasks


def annotate(options: AnnotateOptions) -> tuple[Counts, dict[str, Path]]:
    """Annotate, resumably; returns the counts and each task's written file."""
    out = Path(options.out or options.root)
    items = read_items(options.source, options.root)
    todo = items if options.limit is None else items[: options.limit]
    tasks = [Task(name, label_names(options.source) if name == "labels" else ()) for name in options.tasks]
    backend = open_backend(
        options.llm, options.model, options.concurrency, options.timeout_s, options.max_tokens
    )
    runner = Runner(
        backend,
        out / sidecars.PROGRESS_FILE,
        out / sidecars.REVIEW_FILE,
        concurrency=options.concurrency,
        retries=options.retries,
        backoff_s=options.backoff_s,
        progress_bar=options.progress_bar,
        retry_failed=options.retry_failed,
    )

    async def main() -> Counts:
        async with backend:
            return await runner.run(todo, tasks)

    counts = asyncio.run(main())
    written = write_outputs(options, out, items, tasks, backend.model)
    return counts, written


def write_outputs(
    options: AnnotateOptions, out: Path, items, tasks: list[Task], model: str
) -> dict[str, Path]:
    """Each task's sidecar from the progress log: every finished report of ``items`` (all of the
    source's, also under ``--limit``, so an earlier run's results stay), one key per volume."""
    finished = read_progress(out / sidecars.PROGRESS_FILE)
    written: dict[str, Path] = {}
    for task in tasks:
        results: dict[str, object] = {}
        failed = 0
        for item in items:
            entry = finished.get((item.id, task.name, task.prompt_version))
            if entry is None or entry["status"] != "done":
                failed += entry is not None
                continue
            for volume in item.volumes:
                results[volume] = entry["result"]
        meta = {
            "task": task.name,
            "prompt_version": task.prompt_version,
            "model": model,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "source": options.source,
            "volumes": len(results),
            "reports": len(items),
            "failed_reports": failed,
            "review_file": sidecars.REVIEW_FILE,
        }
        path = out / sidecars.OUTPUT_FILES[task.name]
        if task.name == "labels":
            sidecars.write_label_table(path, id_column(options.source), task.label_names, results, meta)
        else:
            sidecars.write_json_sidecar(path, results, meta)
        written[task.name] = path
    return written
