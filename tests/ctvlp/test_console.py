"""ctvlp's tables print an em dash for a missing cell; a C/POSIX-locale terminal must not crash on it."""

from __future__ import annotations

import os
import subprocess
import sys

PRINT_A_DASH = "print('R@5: \\u2014')"


def _run_ascii(code: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANG", "LC_CTYPE")}
    env.update(LC_ALL="C", PYTHONUTF8="0")  # ASCII stdout, as on a bare cluster node
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)


def test_an_ascii_terminal_gets_escapes_instead_of_a_crash() -> None:
    plain = _run_ascii(PRINT_A_DASH)
    assert plain.returncode != 0 and b"UnicodeEncodeError" in plain.stderr  # what the helper prevents
    tolerant = _run_ascii(
        f"from ctvlp.console import tolerate_ascii_console\ntolerate_ascii_console()\n{PRINT_A_DASH}"
    )
    assert tolerant.returncode == 0, tolerant.stderr.decode(errors="replace")
    assert tolerant.stdout == b"R@5: \\u2014\n"
