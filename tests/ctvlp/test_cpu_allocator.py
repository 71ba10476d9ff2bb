"""ctvlp/cpu_allocator.py: after keep_freed_memory(), a large tensor freed and allocated again reuses
its pages instead of page-faulting them in afresh (glibc's default maps and unmaps each one)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Allocates a 64 MB tensor, fills it (every page touched) and frees it, 20 times; prints the minor
# page faults of the last 10 rounds (the first ones settle glibc's free lists: a freed block is
# reused from about the fifth round). With keep=1, keep_freed_memory() runs first.
ROUNDS = """
import json, resource, sys, torch
from ctvlp.cpu_allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 * 2**20).fill_(1.0)
start = faults()
for _ in range(10):
    torch.empty(16 * 2**20).fill_(1.0)
print(json.dumps({"applied": applied, "faults": faults() - start}))
"""

PAGES_PER_TENSOR = 64 * 2**20 // 4096


def _rounds(keep: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, "1" if keep else "0"],
        capture_output=True,
        encoding="utf-8",
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_memory_is_reused_without_page_faults() -> None:
    default, kept = _rounds(keep=False), _rounds(keep=True)
    assert not default["applied"] and kept["applied"]
    # glibc's default: every round maps the tensor afresh, one fault per page (16384 per round).
    assert default["faults"] > 10 * PAGES_PER_TENSOR * 0.9
    # Kept: the pages of the earlier rounds serve these ten.
    assert kept["faults"] < PAGES_PER_TENSOR / 4
