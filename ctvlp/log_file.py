"""A command's log lines (progress with rate and ETA, warnings, counts) also written to a file
beside its outputs, where the terminal's progress bars do not reach."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to_file(path: Path | None, info_loggers: Sequence[str] = ()) -> Iterator[None]:
    """What is logged inside the block also goes to ``path`` (appended: a resumed run continues
    its log; its folder is created); ``None``: nowhere else. ``info_loggers`` log at INFO whatever
    the root level (a command's progress lines)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    for name in info_loggers:
        logging.getLogger(name).setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
