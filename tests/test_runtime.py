"""The allocator side of the fast path: freed memory kept during training, handed back after."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgclass import runtime

# in a fresh process: the allocator is process-wide, and earlier tests leave the heap in any state
_PROBE = """
import torch
from imgclass import runtime

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024

runtime.configure()
big = torch.ones(64 * 2**20)  # 256 MiB, from the heap (no mmap) under the setting
grown = rss_mib()
del big
kept = rss_mib()
runtime.release_freed_memory()
print(grown, kept, rss_mib())
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or runtime._glibc_function("mallopt") is None,
    reason="the allocator settings are glibc's (Linux)",
)
def test_freed_memory_stays_until_released():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout
    grown, kept, released = map(float, out.split()[-3:])
    assert kept > grown - 32, "freed memory was handed back at once: the setting is not in effect"
    assert released < kept - 200
