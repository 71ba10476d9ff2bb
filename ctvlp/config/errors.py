"""Errors every layer may raise and the hint they share. Imports nothing of ours."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class ConfigError(ValueError):
    """A configuration the user has to fix; the message says how."""


def did_you_mean(value: str, choices: Sequence[str], cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices`` to ``value``, or ``""``."""
    hint = difflib.get_close_matches(value, list(choices), n=1, cutoff=cutoff)
    return f" Did you mean '{hint[0]}'?" if hint else ""
