"""Run tasks over items: N requests in flight, retries with backoff, a resumable progress log.

The progress log is append-only JSONL, one line per finished (item, task, prompt version):
``{"id", "task", "prompt_version", "status": "done" | "failed", "result" | "reason", ...}``. A
re-run skips every key already in it, so ``kill -9`` loses at most the requests in flight. A torn
last line (killed mid-write) is ignored. Failed items are finished too (listed for review); delete
their lines, or pass ``retry_failed``, to try them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from datamodules.annotation.backends import TransportError
from datamodules.annotation.inputs import Item
from datamodules.annotation.prompts import Task, ValidationError

log = logging.getLogger(__name__)


@dataclass
class Counts:
    done: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0

    def line(self) -> str:
        return (
            f"done {self.done}, retried {self.retried}, failed {self.failed} "
            f"(skipped, already finished: {self.skipped}; requests: {self.requests})"
        )


def read_progress(path: Path) -> dict[tuple[str, str, str], dict]:
    """Finished entries keyed by (id, task, prompt version); the last line for a key wins."""
    finished: dict[tuple[str, str, str], dict] = {}
    if not path.exists():
        return finished
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            finished[(entry["id"], entry["task"], entry["prompt_version"])] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by a kill
    return finished


@dataclass
class Runner:
    backend: object
    progress_path: Path
    review_path: Path
    concurrency: int = 8
    retries: int = 3
    backoff_s: float = 1.0
    progress_bar: bool = True
    retry_failed: bool = False
    counts: Counts = field(default_factory=Counts)

    def pending(self, items: Iterable[Item], tasks: Iterable[Task]) -> list[tuple[Item, Task]]:
        finished = read_progress(self.progress_path)
        todo = []
        for task in tasks:
            for item in items:
                entry = finished.get((item.id, task.name, task.prompt_version))
                if entry is not None and (entry["status"] == "done" or not self.retry_failed):
                    self.counts.skipped += 1
                else:
                    todo.append((item, task))
        return todo

    async def run(self, items: list[Item], tasks: list[Task]) -> Counts:
        todo = self.pending(items, tasks)
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        queue: asyncio.Queue[tuple[Item, Task]] = asyncio.Queue()
        for job in todo:
            queue.put_nowait(job)
        batch = max(1, getattr(self.backend, "batch_size", 1))
        workers = 1 if batch > 1 else max(1, self.concurrency)
        bar = tqdm(total=len(todo), unit="report", desc="annotate", disable=not self.progress_bar)
        with self.progress_path.open("a", encoding="utf-8") as progress:
            with self.review_path.open("a", encoding="utf-8") as review:

                async def worker() -> None:
                    while not queue.empty():
                        jobs = [queue.get_nowait() for _ in range(min(batch, queue.qsize()))]
                        for entry in await self._attempts(jobs):
                            progress.write(json.dumps(entry, ensure_ascii=False) + "\n")
                            progress.flush()
                            if entry["status"] == "failed":
                                review.write(json.dumps(entry, ensure_ascii=False) + "\n")
                                review.flush()
                            bar.update(1)

                await asyncio.gather(*(worker() for _ in range(workers)))
        bar.close()
        return self.counts

    async def _attempts(self, jobs: list[tuple[Item, Task]]) -> list[dict]:
        """Each job's finished entry, after up to ``retries`` retries of what failed."""
        entries: dict[int, dict] = {}
        reasons: dict[int, str] = {}
        replies: dict[int, str] = {}
        open_jobs = list(range(len(jobs)))
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            messages = [jobs[j][1].messages(jobs[j][0].findings, jobs[j][0].impressions) for j in open_jobs]
            self.counts.requests += len(messages)
            try:
                outputs = await self.backend.complete(messages)
            except TransportError as error:
                reasons.update({j: str(error) for j in open_jobs})
                continue
            still_open = []
            for j, reply in zip(open_jobs, outputs, strict=True):
                try:
                    result = jobs[j][1].validate(reply, jobs[j][0].findings)
                except ValidationError as error:
                    reasons[j], replies[j] = str(error), reply
                    still_open.append(j)
                    continue
                entries[j] = self._entry(jobs[j], "done", attempt, result=result)
            open_jobs = still_open
            if not open_jobs:
                break
        for j in open_jobs:
            entries[j] = self._entry(jobs[j], "failed", self.retries, reason=reasons.get(j, "?"))
            if j in replies:
                entries[j]["reply"] = replies[j][:2000]
        for entry in entries.values():
            if entry["status"] == "done":
                self.counts.done += 1
            else:
                self.counts.failed += 1
            self.counts.retried += int(entry["attempts"] > 1)
        return [entries[j] for j in range(len(jobs))]

    @staticmethod
    def _entry(job: tuple[Item, Task], status: str, attempt: int, **extra: object) -> dict:
        item, task = job
        return {
            "id": item.id,
            "task": task.name,
            "prompt_version": task.prompt_version,
            "status": status,
            "attempts": attempt + 1,
            "volumes": list(item.volumes),
            "time": round(time.time(), 3),
            **extra,
        }
