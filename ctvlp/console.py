"""The terminal's encoding: ctvlp's tables and logs carry a few non-ASCII characters (an em dash for a
missing cell, progress bars), which a C/POSIX-locale shell (common in SLURM jobs and containers) cannot
encode. Python would raise UnicodeEncodeError from ``print`` and drop log lines; this escapes them instead."""

from __future__ import annotations

import io
import sys


def tolerate_ascii_console() -> None:
    """Let stdout and stderr write characters their encoding lacks as ``\\u2014`` escapes, not raise."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper):
            continue  # replaced (pytest's capture, a notebook): its owner decides
        try:
            "\u2014\u2588".encode(stream.encoding)
        except (UnicodeEncodeError, LookupError):
            stream.reconfigure(errors="backslashreplace")
